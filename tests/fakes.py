"""In-memory fakes of the ports, type-checked against the same Protocols as the adapters."""

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np

from shared.capture import CaptureStatus
from shared.documents import TEXT_TEMPLATE_VERSION, is_stale
from shared.embedders.hashing import HashingEmbedder
from shared.errors import (
    DrugSyncError,
    EmbeddingError,
    GenerationInUse,
    QuotaWaitTooLong,
    RunActive,
    SwitchRefused,
    UnavailableError,
)
from shared.generations import Registry
from shared.layout import DEFAULT_LAYOUT
from shared.models import Drug, Fetched, Generation, PlannedRange, RowFailure
from shared.ports import (
    Catalog,
    ChangeFeed,
    DocumentStore,
    Embedder,
    GenerationCounts,
    Generations,
    Ledger,
    RequestLimiter,
    RunProgress,
    RunTouch,
    Vectors,
    WorkQueue,
    WriteResult,
)
from shared.telemetry import Telemetry


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
    """The source table; like Postgres, each read stamps its drugs with the time of its snapshot."""

    def __init__(
        self, drugs: Sequence[Drug], eligible: set[int] | None = None, broken: Mapping[int, str] | None = None
    ) -> None:
        self.drugs = {drug.id: drug for drug in drugs}
        self.eligible = eligible if eligible is not None else set(self.drugs)
        self.broken = dict(broken or {})
        self.fetches: list[tuple[int, int]] = []
        self.snapshots = 0
        self.table_name = "drugs"

    def _eligible_ids(self) -> list[int]:
        return sorted(i for i in self.drugs if i in self.eligible)

    def _fetched(self, ids: Sequence[int]) -> Fetched:
        self.snapshots += 1
        read_at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.snapshots)
        good = [self.drugs[i].model_copy(update={"read_at": read_at}) for i in ids if i not in self.broken]
        bad = [RowFailure(i, "RowError", f"drug id {i}: {self.broken[i]}") for i in ids if i in self.broken]
        return Fetched(good, bad)

    def plan_ranges(self, range_size: int, max_drugs: int | None) -> list[PlannedRange]:
        ids = self._eligible_ids()[:max_drugs]
        ranges: list[PlannedRange] = []
        for start in range(0, len(ids), range_size):
            chunk = ids[start : start + range_size]
            first = ranges[-1].last_id + 1 if ranges else chunk[0]
            ranges.append(PlannedRange(first, chunk[-1], len(chunk)))
        return ranges

    def fetch_range(self, first_id: int, last_id: int) -> Fetched:
        self.fetches.append((first_id, last_id))
        return self._fetched([i for i in self._eligible_ids() if first_id <= i <= last_id])

    def fetch_ids(self, ids: Sequence[int]) -> Fetched:
        return self._fetched([i for i in self._eligible_ids() if i in set(ids)])

    def count_eligible(self) -> int:
        return len(self._eligible_ids())

    def count_range(self, first_id: int, last_id: int) -> int:
        return sum(first_id <= i <= last_id for i in self._eligible_ids())

    def qualifying_ids(self, ids: Sequence[int]) -> set[int]:
        return set(ids) & set(self._eligible_ids())


class FakeLedger:
    """The ledger's semantics in memory: unknown ranges are refused, a run finishes once."""

    def __init__(self, changes: "FakeChangeFeed | None" = None) -> None:
        self.runs: dict[UUID, dict[str, Any]] = {}
        self.done: dict[tuple[UUID, int], int] = {}
        self.failures: dict[tuple[UUID, int], RowFailure] = {}
        self.resolved: set[tuple[UUID, int]] = set()
        self.skipped: dict[tuple[UUID, int], int] = {}
        self.finishes = 0
        self.changes = changes  # like the real ledger, a capture run's finish releases its changes

    def ensure_schema(self) -> None:
        pass

    def start_run(
        self,
        run_id: UUID,
        range_size: int,
        max_drugs: int | None,
        ranges: Sequence[PlannedRange],
        *,
        mode: str = "full",
        generation: int | None = None,
        source_table: str | None = None,
        changes_source: str | None = None,
        swept: bool = False,
        supersede: bool = False,
        claim_seconds: float = 3600.0,
        plan: Callable[[], Sequence[PlannedRange]] | None = None,
    ) -> list[UUID]:
        now = datetime.now(UTC)
        active = [
            other
            for other, run in self.runs.items()
            if not run.get("finished")
            and not run.get("superseded")
            and run.get("source_table") == source_table
        ]
        expired = {
            other
            for other in active
            if self._last_activity(other) < now - timedelta(seconds=claim_seconds)
            or self.runs[other].get("switch_error") is not None
            or self._never_opened(other)
        }
        holding = [other for other in active if other not in expired]
        if holding and not supersede:
            raise RunActive(f"run {holding[-1]} ({self.runs[holding[-1]]['mode']}) is still active")
        for other in active:
            self.runs[other].update(superseded=now, superseded_by=run_id)
        if plan is not None:  # under the claim, as the real ledger does, and before the watermark
            ranges = plan()
            range_size = max((planned.drug_count for planned in ranges), default=1)
        self.runs[run_id] = {
            "range_size": range_size, "ranges": list(ranges), "started": now, "max_drugs": max_drugs,
            "mode": mode, "generation": generation, "source_table": source_table,
            "changes_source": changes_source, "swept": now if swept else None, "watermark": now,
        }  # fmt: skip
        return active

    def _never_opened(self, run_id: UUID) -> bool:
        run = self.runs[run_id]
        return bool(
            run.get("enqueue_error") and run.get("generation") is None and run["mode"] in ("full", "rebuild")
            and run.get("source_table") is not None
        )  # fmt: skip

    def _last_activity(self, run_id: UUID) -> datetime:
        run = self.runs[run_id]
        keys = ("started", "touched", "last_done", "enqueued", "sweep_requested", "swept")
        moments: list[datetime] = [run[key] for key in keys if run.get(key) is not None]
        return max(moments)

    def touch_run(self, run_id: UUID) -> RunTouch | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        run["touched"] = datetime.now(UTC)
        return RunTouch(run["mode"], run["generation"], run.get("superseded"), run.get("superseded_by"))

    def supersede_all(self) -> None:
        """What another run's start does to every active run (its messages are dropped from now on)."""
        for run in self.runs.values():
            if not run.get("finished"):
                run.setdefault("superseded", datetime.now(UTC))

    def last_complete_run(
        self, source_table: str, after: datetime | None = None
    ) -> tuple[UUID, datetime] | None:
        bases = [
            (run["started"], run_id, run["watermark"])
            for run_id, run in self.runs.items()
            if run["source_table"] == source_table and run.get("finished") and not run.get("superseded")
            and run["max_drugs"] is None
            and run["mode"] in ("full", "rebuild", "incremental") and (after is None or run["started"] > after)
        ]  # fmt: skip
        return (max(bases)[1], max(bases)[2]) if bases else None

    def _planned(self, run_id: UUID, first_id: int) -> PlannedRange | None:
        ranges = self.runs.get(run_id, {}).get("ranges", [])
        return next((r for r in ranges if r.first_id == first_id), None)

    def mark_range_done(
        self, run_id: UUID, first_id: int, drugs_written: int, drugs_skipped: int = 0
    ) -> bool:
        if (run_id, first_id) in self.done or self._planned(run_id, first_id) is None:
            return False
        self.done[(run_id, first_id)] = drugs_written
        self.skipped[(run_id, first_id)] = drugs_skipped
        self.runs[run_id]["last_done"] = datetime.now(UTC)
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
            open_failures=len(self.open_failures(run_id)),
            enqueued_at=run.get("enqueued"),
            enqueue_error=run.get("enqueue_error"),
            sweep_requested_at=run.get("sweep_requested"),
            swept_at=run.get("swept"),
            documents_removed=run.get("removed", 0),
            finished_at=run.get("finished"),
            announced_at=run.get("announced"),
            mode=run["mode"],
            generation=run["generation"],
            superseded_at=run.get("superseded"),
            drugs_skipped=sum(value for key, value in self.skipped.items() if key[0] == run_id),
            switched_at=run.get("switched"),
            switch_error=run.get("switch_error"),
            source_table=run["source_table"],
        )

    def latest_run_id(self) -> UUID | None:
        return next(reversed(self.runs), None)

    def finish_run(self, run_id: UUID) -> bool:
        progress = self.progress(run_id)
        if progress is None or not progress.ranges_complete or progress.swept_at is None:
            return False
        if progress.superseded_at is not None:
            return False
        if progress.finished_at is not None:
            return False
        self.runs[run_id]["finished"] = datetime.now(UTC)
        self.finishes += 1
        if self.runs[run_id]["changes_source"] == "capture" and self.changes is not None:
            self.changes.release(run_id, {f.drug_id for f in self.open_failures(run_id)})
        return True

    def _set(self, run_id: UUID, key: str, value: Any) -> None:
        if run_id in self.runs:
            self.runs[run_id][key] = value

    def set_generation(self, run_id: UUID, generation: int) -> None:
        self._set(run_id, "generation", generation)

    def mark_enqueued(self, run_id: UUID) -> None:
        self._set(run_id, "enqueued", datetime.now(UTC))
        self._set(run_id, "enqueue_error", None)

    def record_enqueue_error(self, run_id: UUID, error: str) -> None:
        self._set(run_id, "enqueue_error", error)

    def mark_sweep_requested(self, run_id: UUID) -> None:
        self._set(run_id, "sweep_requested", datetime.now(UTC))

    def add_removed(self, run_id: UUID, removed: int) -> None:
        self._set(run_id, "removed", self.runs.get(run_id, {}).get("removed", 0) + removed)

    def mark_swept(self, run_id: UUID) -> None:
        progress = self.progress(run_id)
        if progress is None or progress.superseded_at is not None:
            return
        if progress.ranges_complete and progress.swept_at is None:
            self._set(run_id, "swept", datetime.now(UTC))

    def claim_sweep(self, run_id: UUID, lease_seconds: float) -> bool:
        progress = self.progress(run_id)
        if progress is None or not progress.ranges_complete or progress.swept_at is not None:
            return False
        if progress.superseded_at is not None:
            return False
        if self.runs[run_id].get("sweep_claimed"):
            return False
        self.runs[run_id]["sweep_claimed"] = True
        self._set(run_id, "sweep_requested", datetime.now(UTC))
        return True

    def release_sweep(self, run_id: UUID) -> None:
        self._set(run_id, "sweep_claimed", False)
        self._set(run_id, "sweep_requested", None)

    def claim_announcement(self, run_id: UUID, lease_seconds: float) -> bool:
        run = self.runs.get(run_id, {})
        if not run.get("finished") or run.get("announced") or run.get("claimed"):
            return False
        run["claimed"] = True
        return True

    def release_announcement(self, run_id: UUID) -> None:
        self._set(run_id, "claimed", False)

    def mark_announced(self, run_id: UUID) -> None:
        self._set(run_id, "announced", datetime.now(UTC))

    def claim_switch(self, run_id: UUID, lease_seconds: float) -> bool:
        run = self.runs.get(run_id, {})
        if not run.get("swept") or run.get("switched") or run.get("switch_claimed") or run.get("superseded"):
            return False
        run["switch_claimed"] = True
        return True

    def release_switch(self, run_id: UUID) -> None:
        self._set(run_id, "switch_claimed", False)

    def record_switch_error(self, run_id: UUID, error: str) -> None:
        self._set(run_id, "switch_error", error)
        self._set(run_id, "switch_claimed", False)

    def mark_switched(self, run_id: UUID) -> None:
        self._set(run_id, "switched", datetime.now(UTC))
        self._set(run_id, "switch_error", None)

    def max_drugs(self, run_id: UUID) -> int | None:
        cap: int | None = self.runs.get(run_id, {}).get("max_drugs")
        return cap

    def changes_during(self, run_id: UUID) -> int:
        run = self.runs.get(run_id)
        if run is None or self.changes is None or self.changes.table != run["source_table"]:
            return 0
        return len({drug_id for drug_id, at in self.changes.recorded if at >= run["started"]})

    def undone_ranges(self, run_id: UUID) -> list[PlannedRange]:
        ranges = self.runs.get(run_id, {}).get("ranges", [])
        return [r for r in ranges if (run_id, r.first_id) not in self.done]

    def range_state(self, run_id: UUID, first_id: int) -> tuple[int, bool] | None:
        planned = self._planned(run_id, first_id)
        return None if planned is None else (planned.last_id, (run_id, first_id) in self.done)

    def record_failures(self, run_id: UUID, failures: Sequence[RowFailure]) -> None:
        for failure in failures:
            self.failures[(run_id, failure.drug_id)] = failure
            self.resolved.discard((run_id, failure.drug_id))

    def resolve_failures(self, run_id: UUID, ids: Sequence[int]) -> None:
        self.resolved |= {(run_id, i) for i in ids if (run_id, i) in self.failures}

    def open_failures(self, run_id: UUID) -> list[RowFailure]:
        return [
            f
            for (run, i), f in sorted(self.failures.items())
            if run == run_id and (run, i) not in self.resolved
        ]

    def open_failures_between(self, run_id: UUID, first_id: int, last_id: int) -> int:
        return sum(first_id <= f.drug_id <= last_id for f in self.open_failures(run_id))


class FakeChangeFeed:
    """The change table: rows (drug id, claiming run); a claim takes every row not of the claimer."""

    def __init__(self, installed_at: datetime | None = None, table: str = "drugs") -> None:
        self.installed_at = installed_at
        self.table = table
        self.rows: list[list[Any]] = []  # [drug_id, run_id | None]
        self.updated: dict[int, datetime] = {}  # the watermark's view: updated_at by id
        self.triggers = 3 if installed_at else 0
        self.truncated_at: datetime | None = None
        self.recorded: list[tuple[int, datetime]] = []

    def record(self, *ids: int) -> None:
        self.rows += [[drug_id, None] for drug_id in ids]
        self.recorded += [(drug_id, datetime.now(UTC)) for drug_id in ids]  # changed_at, kept after release

    def status(self) -> CaptureStatus:
        unclaimed = sum(run is None for _, run in self.rows)
        return CaptureStatus(
            self.table, self.triggers, self.installed_at, len(self.rows), unclaimed, self.truncated_at
        )

    def claim(self, run_id: UUID) -> list[int]:
        claimed = [row for row in self.rows if row[1] != run_id]
        for row in claimed:
            row[1] = run_id
        return sorted({row[0] for row in claimed})

    def release(self, run_id: UUID, still_failing: set[int]) -> None:
        self.rows = [row for row in self.rows if row[1] != run_id or row[0] in still_failing]

    def changed_since(self, since: datetime) -> list[int]:
        return sorted(drug_id for drug_id, at in self.updated.items() if at >= since)


class FakeStore:
    def __init__(self, rejects: Callable[[dict[str, Any]], str | None] = lambda document: None) -> None:
        self.documents: dict[int, dict[str, Any]] = {}
        self.index_dimension: int | None = None
        self.write_calls = 0
        self.absent_hints: list[set[int]] = []  # each write_documents call's `absent`
        self.fingerprint_reads = 0
        self._rejects = rejects
        self._cursors: dict[int, int] = {}
        self.server = "server-1"

    def ensure_index(self, dimension: int) -> None:
        self.index_dimension = dimension

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        """Newest wins as on the server, whatever `absent` claims: a strictly older version than the
        stored one is skipped."""
        self.write_calls += 1
        self.absent_hints.append(set(absent))
        failures, stale = [], 0
        for drug_id, document in documents:
            reason = self._rejects(document)
            stored = self.documents.get(drug_id, {}).get("version")
            if reason:
                failures.append(RowFailure(drug_id, "ResponseError", reason))
            elif is_stale(stored, document.get("version")):
                stale += 1
            else:
                self.documents[drug_id] = document
        return WriteResult(failures, stale)

    def stored_fingerprints(self, drug_ids: Sequence[int]) -> dict[int, str]:
        self.fingerprint_reads += 1
        return {i: self.documents[i]["fingerprint"] for i in drug_ids if i in self.documents}

    def scan_ids(self, cursor: int, count: int) -> tuple[int, list[int]]:
        """A SCAN walk in id order behind opaque cursors; 0 starts a walk and ends one."""
        if cursor and cursor not in self._cursors:
            return 0, []  # a cursor of another server process: the walk silently ends, keys unseen
        after = self._cursors[cursor] if cursor else None
        ids = sorted(i for i in self.documents if after is None or i > after)
        page = ids[:count]
        if len(ids) <= count:
            return 0, page
        self._cursors[len(self._cursors) + 1] = page[-1]
        return len(self._cursors), page

    def server_id(self) -> str:
        """A restart is a new server: its cursors are not the old one's."""
        return self.server

    def restart(self) -> None:
        self.server = f"server-{len(self._cursors) + 2}"
        self._cursors.clear()

    def delete_documents(self, drug_ids: Sequence[int]) -> int:
        removed = [i for i in drug_ids if self.documents.pop(i, None) is not None]
        return len(removed)


class FakeGenerations:
    """Generations in memory, each a FakeStore; the switch moves `current` as the alias would.

    `indexed_lag` documents of a generation are not indexed yet; `indexing_failures` failed to.
    """

    def __init__(self, shared: FakeStore | None = None) -> None:
        self.registry = Registry(None, {})
        self.stores: dict[int, FakeStore] = {}
        self._shared = shared  # one store for every generation: for tests about something else
        self.indexed_lag = 0
        self.indexing_failures = 0
        self.switches: list[int] = []
        self.layout = DEFAULT_LAYOUT

    def read(self) -> Registry:
        return self.registry

    def store(self, number: int, generation: Generation | None = None) -> FakeStore:
        return self._shared or self.stores.setdefault(number, FakeStore())

    def _put(self, generation: Generation, current: int | None = None) -> None:
        generations = {**self.registry.generations, generation.number: generation}
        self.registry = Registry(self.registry.current if current is None else current, generations)

    def begin(self, embedder: str, dimension: int, run_id: str) -> Generation:
        number = max([0, *self.registry.generations]) + 1
        generation = Generation(
            number, embedder, dimension, TEXT_TEMPLATE_VERSION, f"drug@{number}:", f"idx@{number}",
            run_id, "building", "", *self.layout.identity,
        )  # fmt: skip
        self._put(generation)
        self.store(number).ensure_index(dimension)
        return generation

    def adopt(self, number: int, run_id: str) -> None:
        self._put(replace(self.registry.generations[number], run_id=run_id))

    def mark_retiring(self, number: int) -> None:
        generation = self.registry.generations.get(number)
        if generation is not None and number != self.registry.current:  # as Redis: never the current one
            self._put(replace(generation, state="retiring"))

    def switch(self, number: int) -> Generation | None:
        new = self.registry.generations.get(number)
        if new is None or new.state != "building":  # as Redis: only a generation still building
            raise SwitchRefused(f"generation {number} is {new and new.state}, not building")
        old = self.registry.live
        if old is not None:
            self._put(replace(old, state="retiring"))
        self._put(replace(new, state="live"), current=number)
        self.switches.append(number)
        return None if old is None else replace(old, state="retiring")

    def counts(self, number: int, canary_k: int, wait_seconds: float) -> GenerationCounts:
        """As FT.INFO and a KNN query would answer: nothing without an index; a document whose vector
        is not of the index's dimension fails to index; the canary finds only indexed vectors."""
        store = self.store(number)
        documents = len(store.documents)
        if store.index_dimension is None:
            return GenerationCounts(documents, 0, 0, 0)
        vectors = [d.get("embedding") for d in store.documents.values()]
        misfits = sum(v is not None and len(v) != store.index_dimension for v in vectors)
        failures = self.indexing_failures + misfits
        indexed = max(documents - self.indexed_lag - failures, 0)
        searchable = min(indexed, sum(v is not None and len(v) == store.index_dimension for v in vectors))
        return GenerationCounts(documents, indexed, failures, min(canary_k, searchable))

    def drop_index(self, number: int) -> bool:
        if number == self.registry.current:
            raise GenerationInUse(f"generation {number} is current")
        store = self.store(number)
        existed = store.index_dimension is not None
        store.index_dimension = None
        return existed

    def unlink_page(self, number: int, cursor: int, count: int) -> tuple[int, int]:
        store = self.store(number)
        next_cursor, ids = store.scan_ids(cursor, count)
        return next_cursor, store.delete_documents(ids)

    def forget(self, number: int) -> None:
        generations = {n: g for n, g in self.registry.generations.items() if n != number}
        self.registry = Registry(self.registry.current, generations)

    def server_id(self) -> str:
        return "server-1"


SQS_MAX_BODY_BYTES = 262_144  # a message's body and attributes together
SQS_MAX_DELAY_SECONDS = 900


class FakeQueue:
    """Records what was sent; refuses what SQS would refuse (a message too big, a delay too long).

    Receiving, visibility and receipt handles are not faked: tests that rely on them use moto.
    """

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.sent: list[tuple[str, dict[str, str], int]] = []

    def send_messages(
        self, bodies: Sequence[str], attributes: Mapping[str, str] | None = None, delay_seconds: int = 0
    ) -> int:
        if not 0 <= delay_seconds <= SQS_MAX_DELAY_SECONDS:
            raise ValueError(f"DelaySeconds {delay_seconds} outside 0..{SQS_MAX_DELAY_SECONDS}")
        extra = sum(len(name.encode()) + len(value.encode()) for name, value in (attributes or {}).items())
        for body in bodies:
            if not body or len(body.encode()) + extra > SQS_MAX_BODY_BYTES:
                raise ValueError(f"a message of {len(body.encode()) + extra} bytes is not one SQS accepts")
        self.bodies.extend(bodies)
        self.sent.extend((body, dict(attributes or {}), delay_seconds) for body in bodies)
        return len(bodies)


class RecordingTelemetry:
    """Adds up every count and keeps every duration, by metric name."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}
        self.durations: dict[str, list[float]] = {}

    def count(self, name: str, value: float = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + value

    def milliseconds(self, name: str, value: float) -> None:
        self.durations.setdefault(name, []).append(value)


class FakeClock:
    """Time that moves only when told: embedders and deadlines share it (and a consumer's write
    thread: moves are atomic)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class FakeDeadline:
    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self._clock = clock
        self._end = clock.now + seconds

    def remaining_seconds(self) -> float:
        return self._end - self._clock.now


class WrappingEmbedder:
    """An embedder that passes name and dimension through from the one it wraps."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def embed_query(self, text: str) -> Vectors:
        return self._inner.embed_query(text)


class CountingEmbedder(WrappingEmbedder):
    """The real hashing embedder, counting calls and texts, with faults to order.

    `seconds_per_text` advances a FakeClock; `rejects` names texts the "API" refuses;
    `unavailable_calls` makes the next N calls fail as throttling would; `raises` scripts the next
    calls one by one (an error to raise, or None for a normal call).
    """

    def __init__(
        self,
        dimension: int = 64,
        clock: FakeClock | None = None,
        seconds_per_text: float = 0.0,
        rejects: Callable[[str], bool] = lambda text: False,
        unavailable_calls: int = 0,
        raises: Sequence[DrugSyncError | None] = (),
    ) -> None:
        super().__init__(HashingEmbedder(dimension, batch_size=10_000))
        self.calls = 0
        self.texts = 0
        self.embedded: list[str] = []
        self._clock = clock
        self._seconds_per_text = seconds_per_text
        self._rejects = rejects
        self.unavailable_calls = unavailable_calls
        self.raises = list(raises)

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        scripted = self.raises.pop(0) if self.raises else None
        if scripted is not None:
            raise scripted
        if self.unavailable_calls > 0:
            self.unavailable_calls -= 1
            raise UnavailableError("ThrottlingException: rate exceeded")
        if any(self._rejects(text) for text in texts):
            raise EmbeddingError("ValidationException: input rejected")
        if self._clock is not None:
            self._clock.sleep(self._seconds_per_text * len(texts))
        self.texts += len(texts)
        self.embedded.extend(texts)
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
_changes: ChangeFeed = FakeChangeFeed()
_generations: Generations = FakeGenerations()
_embedder: Embedder = CountingEmbedder()
_telemetry: Telemetry = RecordingTelemetry()


class FakeQuota:
    """The shared quota's reservations on a FakeClock: slots `interval` apart, a wait beyond the budget
    refused without taking one. Records each admission's slot."""

    def __init__(self, clock: FakeClock, interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._next = 0.0
        self.wait_budget: Callable[[], float] = lambda: 900.0
        self.slots: list[float] = []

    def acquire(self, requests: int, tokens: int) -> None:
        slot = max(self._clock.now, self._next)
        wait = slot - self._clock.now
        if wait > self.wait_budget():
            raise QuotaWaitTooLong(wait, "fake")
        self._next = slot + requests * self._interval
        self.slots.append(slot)
        self._clock.sleep(wait)

    def take(self, requests: int) -> None:
        """Other callers reserve the next `requests` slots."""
        self._next = max(self._clock.now, self._next) + requests * self._interval


class OneTextApiEmbedder(HashingEmbedder):
    """An API embedder on a FakeClock: one text per request, each passing the limiter, then `latency`."""

    def __init__(self, dimension: int, clock: FakeClock, latency: float) -> None:
        super().__init__(dimension, batch_size=10_000)
        self._clock = clock
        self._latency = latency
        self.requests = 0

    @property
    def texts_per_request(self) -> int:
        return 1

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        for text in texts:
            self._before_request([text])
            self.requests += 1
            self._clock.sleep(self._latency)
        return super()._embed_batch(texts)


class ScriptedRedis:
    """Answers the reservation script with scripted replies and records its arguments."""

    def __init__(self, *replies: list[int]) -> None:
        self.replies = list(replies)
        self.calls: list[dict[str, Any]] = []

    def register_script(self, script: str) -> Any:
        def run(keys: list[str], args: list[Any]) -> list[int]:
            self.calls.append({"keys": keys, "args": args})
            return self.replies.pop(0)

        return run


_quota: RequestLimiter = FakeQuota(FakeClock(), 1.0)
