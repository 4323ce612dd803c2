"""The collaborators the core needs, as Protocols; adapters and test fakes both satisfy them."""

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import numpy as np
import numpy.typing as npt

from shared.capture import CaptureStatus
from shared.layout import StorageLayout
from shared.models import Fetched, Generation, PlannedRange, RowFailure

if TYPE_CHECKING:
    from shared.generations import Registry

Vectors = npt.NDArray[np.float32]


class Catalog(Protocol):
    """The source table of drugs."""

    @property
    def table_name(self) -> str:
        """The table as settings name it: how the ledger and change capture tell catalogs apart."""
        ...

    def plan_ranges(self, range_size: int, max_drugs: int | None) -> list[PlannedRange]: ...

    def fetch_range(self, first_id: int, last_id: int) -> Fetched: ...

    def fetch_ids(self, ids: Sequence[int]) -> Fetched: ...

    def count_eligible(self) -> int: ...

    def count_range(self, first_id: int, last_id: int) -> int: ...

    def qualifying_ids(self, ids: Sequence[int]) -> set[int]: ...


@dataclass(frozen=True)
class RunProgress:
    """A run as the ledger knows it: its ranges, then its sweep, then its one finish."""

    run_id: UUID
    started_at: datetime
    range_size: int
    eligible_drugs: int
    total_ranges: int
    ranges_done: int
    drugs_done: int
    last_done_at: datetime | None
    open_failures: int = 0
    enqueued_at: datetime | None = None
    enqueue_error: str | None = None
    sweep_requested_at: datetime | None = None
    swept_at: datetime | None = None
    documents_removed: int = 0
    finished_at: datetime | None = None
    announced_at: datetime | None = None
    mode: str = "full"
    generation: int | None = None
    superseded_at: datetime | None = None
    drugs_skipped: int = 0
    switched_at: datetime | None = None
    switch_error: str | None = None
    source_table: str | None = None  # None for a run recorded before schema v3

    @property
    def without_its_generation(self) -> bool:
        """A full run or rebuild recorded (since v3) with no generation: its generation could not be
        opened, and its documents would go to keys no index reads. Runs from before v3 have none."""
        return self.mode in ("full", "rebuild") and self.generation is None and self.source_table is not None

    @property
    def ranges_complete(self) -> bool:
        return self.ranges_done == self.total_ranges

    @property
    def complete(self) -> bool:
        """Finished: every range done and every document that no longer qualifies removed."""
        return self.finished_at is not None

    @property
    def active(self) -> bool:
        """Holding the one-writer claim: neither finished nor superseded."""
        return self.finished_at is None and self.superseded_at is None

    @property
    def state(self) -> str:
        """enqueue_failed, running, sweeping, superseded, or (finished) complete / complete_with_failures."""
        if self.finished_at is not None:
            return "complete_with_failures" if self.open_failures else "complete"
        if self.superseded_at is not None:
            return "superseded"
        if self.enqueue_error is not None:
            return "enqueue_failed"
        if self.switch_error is not None:
            return "switch_refused"
        return "sweeping" if self.ranges_complete else "running"

    @property
    def last_activity(self) -> datetime:
        """When anything of the run last moved, as far as the ledger can tell."""
        moments = (self.last_done_at, self.enqueued_at, self.sweep_requested_at, self.swept_at)
        return max((moment for moment in moments if moment is not None), default=self.started_at)


@dataclass(frozen=True)
class RunTouch:
    """What a message of a run learns when it heartbeats the run: whether to go on, and how."""

    mode: str
    generation: int | None
    superseded_at: datetime | None
    superseded_by: UUID | None

    @property
    def superseded(self) -> bool:
        return self.superseded_at is not None


class Ledger(Protocol):
    """Where runs and the completion of their ranges are recorded."""

    def ensure_schema(self) -> None: ...

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
        """Record the run if it may write now, taking the one-writer claim; returns the runs it
        superseded, or raises RunActive naming the run that holds the claim. `plan` plans the
        ranges only once the claim is held, atomically with the run's record."""
        ...

    def touch_run(self, run_id: UUID) -> RunTouch | None:
        """Heartbeat a run (its claim stays alive) and say whether it was superseded; None if unknown."""
        ...

    def last_complete_run(
        self, source_table: str, after: datetime | None = None
    ) -> tuple[UUID, datetime] | None:
        """The newest complete full or incremental run of the table (started after `after`), with
        its watermark: the time before it read what changed."""
        ...

    def mark_range_done(
        self, run_id: UUID, first_id: int, drugs_written: int, drugs_skipped: int = 0
    ) -> bool: ...

    def progress(self, run_id: UUID) -> RunProgress | None: ...

    def latest_run_id(self) -> UUID | None: ...

    def finish_run(self, run_id: UUID) -> bool: ...

    def set_generation(self, run_id: UUID, generation: int) -> None: ...

    def mark_enqueued(self, run_id: UUID) -> None: ...

    def record_enqueue_error(self, run_id: UUID, error: str) -> None: ...

    def mark_sweep_requested(self, run_id: UUID) -> None: ...

    def add_removed(self, run_id: UUID, removed: int) -> None: ...

    def mark_swept(self, run_id: UUID) -> None: ...

    def claim_sweep(self, run_id: UUID, lease_seconds: float) -> bool: ...

    def release_sweep(self, run_id: UUID) -> None: ...

    def claim_announcement(self, run_id: UUID, lease_seconds: float) -> bool: ...

    def release_announcement(self, run_id: UUID) -> None: ...

    def mark_announced(self, run_id: UUID) -> None: ...

    def claim_switch(self, run_id: UUID, lease_seconds: float) -> bool: ...

    def release_switch(self, run_id: UUID) -> None: ...

    def record_switch_error(self, run_id: UUID, error: str) -> None: ...

    def mark_switched(self, run_id: UUID) -> None: ...

    def max_drugs(self, run_id: UUID) -> int | None: ...

    def changes_during(self, run_id: UUID) -> int:
        """Distinct drugs change capture recorded for the run's table since it started (0 without capture)."""
        ...

    def undone_ranges(self, run_id: UUID) -> list[PlannedRange]: ...

    def range_state(self, run_id: UUID, first_id: int) -> tuple[int, bool] | None: ...

    def record_failures(self, run_id: UUID, failures: Sequence[RowFailure]) -> None: ...

    def resolve_failures(self, run_id: UUID, ids: Sequence[int]) -> None: ...

    def open_failures(self, run_id: UUID) -> list[RowFailure]: ...

    def open_failures_between(self, run_id: UUID, first_id: int, last_id: int) -> int: ...


class ChangeFeed(Protocol):
    """Which drugs changed: claimed from change capture, or read by the updated_at watermark."""

    def status(self) -> CaptureStatus: ...

    def claim(self, run_id: UUID) -> list[int]: ...

    def changed_since(self, since: datetime) -> list[int]: ...


@dataclass(frozen=True)
class WriteResult:
    """What writing documents did: the rows the store refused, and the writes skipped as stale."""

    failures: list[RowFailure]
    stale_skipped: int = 0


class DocumentStore(Protocol):
    """The Redis copy: one document per drug (JSON or HASH) behind a vector index."""

    def ensure_index(self, dimension: int) -> None: ...

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        """Write every document unless a newer version is stored (see documents.is_stale).

        `absent`: ids whose document was missing when last read, a hint the store may use to write
        them more cheaply; it must never let an older document replace a newer one.
        Documents Redis rejects one by one come back as failures; server-wide refusals raise
        UnavailableError.
        """
        ...

    def stored_fingerprints(self, drug_ids: Sequence[int]) -> dict[int, str]:
        """The content fingerprint each stored document carries, for those of `drug_ids` stored."""
        ...

    def scan_ids(self, cursor: int, count: int) -> tuple[int, list[int]]:
        """One SCAN step over the key prefix: the next cursor (0 at the end) and the drug ids seen."""
        ...

    def delete_documents(self, drug_ids: Sequence[int]) -> int: ...

    def server_id(self) -> str:
        """Which server process answers (its run id): SCAN cursors are valid only within it."""
        ...


@dataclass(frozen=True)
class GenerationCounts:
    """A generation's own counts, read before readers are sent to it."""

    documents: int
    indexed: int
    indexing_failures: int
    canary_hits: int


class Generations(Protocol):
    """The generations of the Redis copy and the registry readers follow (shared/generations.py)."""

    @property
    def layout(self) -> StorageLayout:
        """What a generation begun now is made of (the settings' layout)."""
        ...

    def read(self) -> "Registry": ...

    def store(self, number: int, generation: Generation | None = None) -> DocumentStore:
        """The store of one generation: its own key prefix and index, in its recorded layout."""
        ...

    def begin(self, embedder: str, dimension: int, run_id: str) -> Generation: ...

    def adopt(self, number: int, run_id: str) -> None: ...

    def mark_retiring(self, number: int) -> None: ...

    def switch(self, number: int) -> Generation | None:
        """Send readers to this generation; returns the one it replaced (now retiring), if any."""
        ...

    def counts(self, number: int, canary_k: int, wait_seconds: float) -> GenerationCounts:
        """Its documents, index and a canary query's hits, once indexing caught up (or time is up)."""
        ...

    def drop_index(self, number: int) -> bool: ...

    def unlink_page(self, number: int, cursor: int, count: int) -> tuple[int, int]: ...

    def forget(self, number: int) -> None: ...

    def server_id(self) -> str: ...


class WorkQueue(Protocol):
    """A queue of messages (the work queue, or the dead-letter queue)."""

    def send_messages(
        self, bodies: Sequence[str], attributes: Mapping[str, str] | None = None, delay_seconds: int = 0
    ) -> int: ...


class RequestLimiter(Protocol):
    """Admits requests to a rate-limited API (shared by every consumer); blocks until this one may go."""

    def acquire(self, requests: int, tokens: int) -> None:
        """Wait until `requests` requests carrying about `tokens` tokens fit the quota, then take them."""
        ...


class Embedder(Protocol):
    """Turns texts into unit vectors of a fixed dimension, many texts per call."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        """One vector per text; RejectedTexts names texts refused alone, ProviderError refuses them all."""
        ...

    def embed_query(self, text: str) -> Vectors:
        """The vector a search for `text` uses (some models embed a query unlike a document)."""
        ...
