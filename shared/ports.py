"""The collaborators the core needs, as Protocols; adapters and test fakes both satisfy them."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import numpy as np
import numpy.typing as npt

from shared.models import Drug, PlannedRange

Vectors = npt.NDArray[np.float32]


class Catalog(Protocol):
    """The source table of drugs."""

    def plan_ranges(self, range_size: int, max_drugs: int | None) -> list[PlannedRange]: ...

    def fetch_range(self, first_id: int, last_id: int) -> list[Drug]: ...

    def count_eligible(self) -> int: ...


@dataclass(frozen=True)
class RunProgress:
    """A run as the ledger knows it."""

    run_id: UUID
    started_at: datetime
    range_size: int
    eligible_drugs: int
    total_ranges: int
    ranges_done: int
    drugs_done: int
    last_done_at: datetime | None

    @property
    def complete(self) -> bool:
        return self.ranges_done == self.total_ranges


class Ledger(Protocol):
    """Where runs and the completion of their ranges are recorded."""

    def ensure_schema(self) -> None: ...

    def start_run(
        self, run_id: UUID, range_size: int, max_drugs: int | None, ranges: Sequence[PlannedRange]
    ) -> None: ...

    def mark_range_done(self, run_id: UUID, first_id: int, drugs_written: int) -> bool: ...

    def progress(self, run_id: UUID) -> RunProgress | None: ...

    def latest_run_id(self) -> UUID | None: ...


class DocumentStore(Protocol):
    """The Redis copy: one JSON document per drug behind a vector index."""

    def ensure_index(self, dimension: int) -> None: ...

    def write_documents(self, documents: Sequence[tuple[int, dict[str, Any]]]) -> None: ...


class WorkQueue(Protocol):
    """The queue of range messages."""

    def send_messages(self, bodies: Sequence[str]) -> int: ...


class Embedder(Protocol):
    """Turns texts into unit vectors of a fixed dimension, many texts per call."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_texts(self, texts: Sequence[str]) -> Vectors: ...
