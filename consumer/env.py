"""What the consumer's core works with: its collaborators, what a message did, and retrying."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from uuid import UUID

from consumer.pacing import Deadline
from shared.models import RetireMessage, SweepMessage
from shared.ports import Catalog, DocumentStore, Embedder, Generations, Ledger, WorkQueue
from shared.retry import RetryPolicy
from shared.telemetry import Announcer, NoAnnouncer, NoTelemetry, Telemetry

T = TypeVar("T")


@dataclass
class SyncEnv:
    """Everything syncing needs, passed in: the core reads no environment of its own."""

    catalog: Catalog
    embedder: Embedder
    store: DocumentStore
    ledger: Ledger
    work_queue: WorkQueue
    dead_letters: WorkQueue
    retry: RetryPolicy
    chunk_size: int
    margin_seconds: float
    seconds_per_drug: float
    clock: Callable[[], float] = time.monotonic
    telemetry: Telemetry = field(default_factory=NoTelemetry)
    announcer: Announcer = field(default_factory=NoAnnouncer)
    sweep_page_size: int = 1000
    # How long a claim to send the sweep or announce the end holds before another caller may take
    # it: two consumer timeouts, so a dead holder's message, redelivered after the visibility
    # timeout (at least six), finds it lapsed, and a live holder is never doubled.
    claim_seconds: float = 240.0
    # The generations of the Redis copy: each run writes its own (recorded in the ledger), and its
    # end sends readers there. None: `store` is the only one (the unit tests' single store).
    generations: Generations | None = None
    # Run id -> the store of its generation, kept by the process: one ledger read per run.
    run_stores: dict[UUID, DocumentStore] = field(default_factory=dict)
    canary_k: int = 10
    # Under a shared embedding quota, an invocation's first chunk is this small: its share of the quota
    # is unknown until measured, and a chunk too big for the time left would be embedded in vain.
    probe_chunk_size: int | None = None
    # A chunk's write runs on a thread while the next chunk is prepared (consumer/write_behind.py);
    # False writes on the caller's thread, settled in the same order (for a test that needs each
    # write done before the next chunk is prepared).
    write_behind: bool = True


@dataclass(frozen=True)
class Outcome:
    """What one message did."""

    drugs_written: int
    failed_ids: tuple[int, ...] = ()
    continued_at: int | None = None
    deferred: bool = False
    range_done: bool = False
    documents_removed: int = 0
    announced: str | None = None  # the run's final state, set only on the message that announced it
    drugs_skipped: int = 0  # already current in Redis (same fingerprint): neither embedded nor written
    dropped: bool = False  # its run was superseded: nothing done, not a failure


def retried(env: SyncEnv, deadline: Deadline, action: Callable[[], T]) -> T:
    """Retry transient failures within what the invocation can spare."""
    return env.retry.call(action, budget_seconds=max(0.0, deadline.remaining_seconds() - env.margin_seconds))


Walk = TypeVar("Walk", SweepMessage, RetireMessage)


def out_of_time_for_a_page(page_seconds: float, env: SyncEnv, deadline: Deadline) -> bool:
    """Whether a SCAN walk (a sweep, a retirement) should hand off before its next page: two pages
    like the last one would not fit before the margin."""
    return bool(page_seconds) and deadline.remaining_seconds() - env.margin_seconds < 2 * page_seconds


def hand_off_walk(
    message: Walk, cursor: int, server: str | None, removed: int, env: SyncEnv, deadline: Deadline
) -> Outcome:
    """Queue the rest of a SCAN walk as a continuation from the cursor reached (valid on `server`)."""
    rest = message.model_copy(
        update={"cursor": cursor, "server": server, "continuations": message.continuations + 1}
    )
    body = rest.model_dump_json()
    retried(env, deadline, lambda: env.work_queue.send_messages([body]))
    return Outcome(0, documents_removed=removed, continued_at=cursor)
