"""The collaborators the core needs, as Protocols; adapters and test fakes both satisfy them."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import numpy as np
import numpy.typing as npt

from shared.models import Fetched, PlannedRange, RowFailure

Vectors = npt.NDArray[np.float32]


class Catalog(Protocol):
    """The source table of drugs."""

    def plan_ranges(self, range_size: int, max_drugs: int | None) -> list[PlannedRange]: ...

    def fetch_range(self, first_id: int, last_id: int) -> Fetched: ...

    def fetch_ids(self, ids: Sequence[int]) -> Fetched: ...

    def count_eligible(self) -> int: ...

    def count_range(self, first_id: int, last_id: int) -> int: ...


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
    open_failures: int = 0

    @property
    def complete(self) -> bool:
        """Every range is done (some rows may still have failed)."""
        return self.ranges_done == self.total_ranges

    @property
    def state(self) -> str:
        """running, complete, or complete_with_failures when rows sit in the DLQ."""
        if not self.complete:
            return "running"
        return "complete_with_failures" if self.open_failures else "complete"


class Ledger(Protocol):
    """Where runs and the completion of their ranges are recorded."""

    def ensure_schema(self) -> None: ...

    def start_run(
        self, run_id: UUID, range_size: int, max_drugs: int | None, ranges: Sequence[PlannedRange]
    ) -> None: ...

    def mark_range_done(self, run_id: UUID, first_id: int, drugs_written: int) -> bool: ...

    def progress(self, run_id: UUID) -> RunProgress | None: ...

    def latest_run_id(self) -> UUID | None: ...

    def finish_run(self, run_id: UUID) -> bool: ...

    def range_state(self, run_id: UUID, first_id: int) -> tuple[int, bool] | None: ...

    def record_failures(self, run_id: UUID, failures: Sequence[RowFailure]) -> None: ...

    def resolve_failures(self, run_id: UUID, ids: Sequence[int]) -> None: ...

    def open_failures(self, run_id: UUID) -> list[RowFailure]: ...

    def open_failures_between(self, run_id: UUID, first_id: int, last_id: int) -> int: ...


@dataclass(frozen=True)
class WriteResult:
    """What writing documents did: the rows the store refused, and the writes skipped as stale."""

    failures: list[RowFailure]
    stale_skipped: int = 0


class DocumentStore(Protocol):
    """The Redis copy: one JSON document per drug behind a vector index."""

    def ensure_index(self, dimension: int) -> None: ...

    def write_documents(self, documents: Sequence[tuple[int, dict[str, Any]]]) -> WriteResult:
        """Write every document unless a newer version is stored (see documents.is_stale).

        Documents Redis rejects one by one come back as failures; server-wide refusals raise
        UnavailableError.
        """
        ...


class WorkQueue(Protocol):
    """A queue of messages (the work queue, or the dead-letter queue)."""

    def send_messages(
        self, bodies: Sequence[str], attributes: Mapping[str, str] | None = None, delay_seconds: int = 0
    ) -> int: ...


class Embedder(Protocol):
    """Turns texts into unit vectors of a fixed dimension, many texts per call."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_texts(self, texts: Sequence[str]) -> Vectors: ...
