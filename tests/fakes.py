"""In-memory fakes of the ports, type-checked against the same Protocols as the adapters."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import numpy as np

from shared.embedders.hashing import HashingEmbedder
from shared.models import Drug, PlannedRange
from shared.ports import Catalog, DocumentStore, Embedder, Ledger, RunProgress, Vectors, WorkQueue


def make_drug(drug_id: int, name: str = "Amoxicillin 500 mg capsule", **fields: Any) -> Drug:
    values: dict[str, Any] = {
        "ndc": f"00000-{drug_id:04d}-01",
        "name": name,
        "generic_name": "amoxicillin",
        "strength": "500 mg",
        "dosage_form": "capsule",
        "route": "oral",
        "manufacturer": "Teva",
        "description": "A penicillin antibiotic.",
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    values.update(fields)
    return Drug(id=drug_id, **values)


class FakeCatalog:
    def __init__(self, drugs: Sequence[Drug], eligible: set[int] | None = None) -> None:
        self.drugs = {drug.id: drug for drug in drugs}
        self.eligible = eligible if eligible is not None else set(self.drugs)
        self.fetches: list[tuple[int, int]] = []

    def _eligible_ids(self) -> list[int]:
        return sorted(i for i in self.drugs if i in self.eligible)

    def plan_ranges(self, range_size: int, max_drugs: int | None) -> list[PlannedRange]:
        ids = self._eligible_ids()[:max_drugs]
        ranges: list[PlannedRange] = []
        for start in range(0, len(ids), range_size):
            chunk = ids[start : start + range_size]
            first = ranges[-1].last_id + 1 if ranges else chunk[0]
            ranges.append(PlannedRange(first, chunk[-1], len(chunk)))
        return ranges

    def fetch_range(self, first_id: int, last_id: int) -> list[Drug]:
        self.fetches.append((first_id, last_id))
        return [self.drugs[i] for i in self._eligible_ids() if first_id <= i <= last_id]

    def count_eligible(self) -> int:
        return len(self._eligible_ids())


class FakeLedger:
    def __init__(self) -> None:
        self.runs: dict[UUID, dict[str, Any]] = {}
        self.done: dict[tuple[UUID, int], int] = {}

    def ensure_schema(self) -> None:
        pass

    def start_run(
        self, run_id: UUID, range_size: int, max_drugs: int | None, ranges: Sequence[PlannedRange]
    ) -> None:
        self.runs[run_id] = {"range_size": range_size, "ranges": list(ranges), "started": datetime.now(UTC)}

    def mark_range_done(self, run_id: UUID, first_id: int, drugs_written: int) -> bool:
        if (run_id, first_id) in self.done:
            return False
        self.done[(run_id, first_id)] = drugs_written
        return True

    def progress(self, run_id: UUID) -> RunProgress | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        done = {key: value for key, value in self.done.items() if key[0] == run_id}
        return RunProgress(
            run_id=run_id,
            started_at=run["started"],
            range_size=run["range_size"],
            eligible_drugs=sum(r.drug_count for r in run["ranges"]),
            total_ranges=len(run["ranges"]),
            ranges_done=len(done),
            drugs_done=sum(done.values()),
            last_done_at=None,
        )

    def latest_run_id(self) -> UUID | None:
        return next(reversed(self.runs), None)


class FakeStore:
    def __init__(self) -> None:
        self.documents: dict[int, dict[str, Any]] = {}
        self.index_dimension: int | None = None
        self.write_calls = 0

    def ensure_index(self, dimension: int) -> None:
        self.index_dimension = dimension

    def write_documents(self, documents: Sequence[tuple[int, dict[str, Any]]]) -> None:
        self.write_calls += 1
        self.documents.update(documents)


class FakeQueue:
    def __init__(self) -> None:
        self.bodies: list[str] = []

    def send_messages(self, bodies: Sequence[str]) -> int:
        self.bodies.extend(bodies)
        return len(bodies)


class CountingEmbedder:
    """The real hashing embedder, counting calls and texts."""

    def __init__(self, dimension: int = 64, batch_size: int = 100) -> None:
        self._inner = HashingEmbedder(dimension, batch_size)
        self.calls = 0
        self.texts = 0

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        self.texts += len(texts)
        return self._inner.embed_texts(texts)


def unit_vector(dimension: int) -> Vectors:
    vector = np.ones(dimension, dtype=np.float32)
    normalised: Vectors = vector / np.linalg.norm(vector)
    return normalised


# The fakes must keep satisfying the Protocols the core is typed against.
_catalog: Catalog = FakeCatalog([])
_ledger: Ledger = FakeLedger()
_store: DocumentStore = FakeStore()
_queue: WorkQueue = FakeQueue()
_embedder: Embedder = CountingEmbedder()
