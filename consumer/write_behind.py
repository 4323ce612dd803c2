"""One chunk's write in flight while the next chunk is read, embedded and built.

Written one after the other, the two halves of a chunk take turns: the embedder (an API's latency
on Lambda, the CPU locally) waits while Redis writes, and Redis waits while the next chunk is
embedded. With the write (encoding and sending) on a thread they overlap: a consumer keeps Redis
busy while it prepares what comes next.

The thread only writes. Everything else (the ledger, the embedder, the telemetry, deciding where a
unit stops) stays on the caller's thread: the write's own telemetry and retries are recorded on
the thread and replayed to the caller's when it settles the write.
"""

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from types import TracebackType
from typing import Any

from consumer.env import SyncEnv, retried
from consumer.pacing import Deadline
from shared.errors import DrugSyncError
from shared.models import RowFailure


@dataclass(frozen=True)
class Prepared:
    """A chunk ready to write: its documents, the ids that had no stored document when read, the rows
    that failed on the way (texts the API refused), and the drugs already current (not written)."""

    documents: list[tuple[int, dict[str, Any]]]
    absent: frozenset[int]
    failures: list[RowFailure]
    skipped: int


@dataclass(frozen=True)
class Written:
    """What writing a chunk did: the rows that failed, and how many were already current."""

    failures: list[RowFailure]
    skipped: int = 0


def write_prepared(prepared: Prepared, env: SyncEnv, deadline: Deadline) -> Written:
    """Write a prepared chunk's documents (retrying what is transient); every row that failed in it."""
    failures = list(prepared.failures)
    if prepared.documents:
        documents, absent = prepared.documents, prepared.absent
        result = retried(env, deadline, lambda: env.store.write_documents(documents, absent))
        failures += result.failures
        if result.stale_skipped:  # a newer version was already stored: not a failure, but worth seeing
            env.telemetry.count("StaleWritesSkipped", result.stale_skipped)
    if prepared.skipped:  # counted once the chunk is through: a chunk whose write failed is prepared again
        env.telemetry.count("DrugsSkipped", prepared.skipped)
    return Written(failures, prepared.skipped)


@dataclass
class _Recorded:
    """What a write did on its thread that the caller's telemetry must hear: counts and retries."""

    counts: list[tuple[str, float]] = field(default_factory=list)
    durations: list[tuple[str, float]] = field(default_factory=list)
    retries: list[DrugSyncError] = field(default_factory=list)

    def count(self, name: str, value: float = 1) -> None:
        self.counts.append((name, value))

    def milliseconds(self, name: str, value: float) -> None:
        self.durations.append((name, value))

    def replay(self, env: SyncEnv) -> None:
        env.retry.retries += len(self.retries)
        for error in self.retries:
            env.retry.on_retry(error)
        for name, value in self.counts:
            env.telemetry.count(name, value)
        for name, value in self.durations:
            env.telemetry.milliseconds(name, value)


@dataclass(frozen=True)
class Settled:
    """A chunk's write, finished: where the chunk starts in the unit, its size, and what the write
    did or the error that stopped it."""

    position: int
    size: int
    written: Written | None
    error: BaseException | None


@dataclass(frozen=True)
class _InFlight:
    position: int
    size: int
    future: "Future[Written]"
    recorded: _Recorded


class WriteBehind:
    """At most one chunk's write in flight on a thread of its own.

    Used as a context manager: leaving it (an error included) waits for the write in flight, so no
    write outlives the invocation that started it. With `threaded=False` the write runs at once on
    the caller's thread, and is still settled later, in the same order (deterministic tests)."""

    def __init__(self, env: SyncEnv, deadline: Deadline, threaded: bool = True) -> None:
        self._env = env
        self._deadline = deadline
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="drugsync-write") if threaded else None
        self._in_flight: _InFlight | None = None

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        settled = self.settle()  # a write left in flight when the unit raised: it still happened
        if settled is not None and settled.error is not None and error is not None:
            lost, at = settled.error, settled.position
            error.add_note(f"the write in flight (the unit's drugs #{at} on) failed too: {lost!r}")
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @property
    def in_flight(self) -> int:
        """Drugs whose write has not been settled yet."""
        return 0 if self._in_flight is None else self._in_flight.size

    def submit(self, position: int, size: int, prepared: Prepared) -> None:
        """Start writing a chunk; the one before must have been settled."""
        if self._in_flight is not None:
            raise RuntimeError("a chunk's write is still in flight: settle it first")
        recorded = _Recorded()
        # The thread's own telemetry and retry policy: both record, and the caller replays them.
        retry = replace(self._env.retry, on_retry=recorded.retries.append)
        env = replace(self._env, telemetry=recorded, retry=retry)
        write = partial(write_prepared, prepared, env, self._deadline)
        self._in_flight = _InFlight(position, size, self._start(write), recorded)

    def _start(self, write: Callable[[], Written]) -> "Future[Written]":
        if self._pool is not None:
            return self._pool.submit(write)
        future: Future[Written] = Future()
        try:
            future.set_result(write())
        except BaseException as error:  # handed to whoever settles, as the thread would
            future.set_exception(error)
        return future

    def settle(self) -> Settled | None:
        """Wait for the write in flight (None if there is none) and replay what it reported."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return None
        error = in_flight.future.exception()
        in_flight.recorded.replay(self._env)
        written = None if error is not None else in_flight.future.result()
        return Settled(in_flight.position, in_flight.size, written, error)
