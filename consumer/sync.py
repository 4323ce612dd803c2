"""Sync one message: a range (continuing itself before time runs out) or rows back from the DLQ.

Nothing written is redone because of a timeout: before the invocation would run out, the rest of
the range is handed off as a continuation. Rows that fail on their own (a broken row, a text the
embedding API rejects, a document Redis refuses) are recorded and sent to the DLQ by id while
every good row is written.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar
from uuid import UUID

from consumer.pacing import Deadline, Pacer
from shared.documents import build_document, build_embedding_text
from shared.errors import EmbeddingError, InvalidMessage, UnavailableError
from shared.models import MAX_DEFERRALS, Drug, RangeMessage, RowFailure, RowsMessage
from shared.ports import Catalog, DocumentStore, Embedder, Ledger, Vectors, WorkQueue
from shared.retry import RetryPolicy
from shared.telemetry import NoTelemetry, Telemetry

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


@dataclass(frozen=True)
class Outcome:
    """What one message did."""

    drugs_written: int
    failed_ids: tuple[int, ...] = ()
    continued_at: int | None = None
    deferred: bool = False
    range_done: bool = False
    run_finished: str | None = None  # the run's state, set only by the message that finished it


def sync_message(message: RangeMessage | RowsMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    if isinstance(message, RowsMessage):
        return sync_rows(message, env, deadline)
    return sync_range(message, env, deadline)


def sync_range(message: RangeMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    """Write the range from message.first_id on; hand off the rest if time or the API runs short."""
    state = _retried(env, deadline, lambda: env.ledger.range_state(message.run_id, message.range_key))
    if state is None or state[0] != message.last_id:
        raise InvalidMessage(f"run {message.run_id} has no range {message.range_key}..{message.last_id}")
    if state[1]:
        return Outcome(0)  # already done: a redelivery pays for no embedding twice
    fetched = _retried(env, deadline, lambda: env.catalog.fetch_range(message.first_id, message.last_id))
    # Broken rows are isolated as the range reaches them, so a continuation never isolates twice.
    broken = sorted(fetched.broken, key=lambda row: row.drug_id)
    failed: list[int] = []
    pacer = Pacer(deadline, env.margin_seconds, env.seconds_per_drug, env.clock)
    drugs, position, written = fetched.drugs, 0, 0
    while position < len(drugs):
        passed = [row for row in broken if row.drug_id < drugs[position].id]
        broken = broken[len(passed) :]
        failed += isolate(env, deadline, message.run_id, passed)
        size = pacer.next_chunk_size(env.chunk_size, made_progress=position > 0)
        if size == 0:
            return _continue(message, drugs[position:], env, written, failed, deferred=False)
        chunk = drugs[position : position + size]
        try:
            failures = pacer.timed(len(chunk), partial(write_chunk, chunk, env, deadline))
        except UnavailableError:
            if message.deferrals >= MAX_DEFERRALS:
                raise
            return _continue(message, drugs[position:], env, written, failed, deferred=True)
        failed += isolate(env, deadline, message.run_id, failures)
        written += len(chunk) - len(failures)
        env.telemetry.count("DrugsSynced", len(chunk) - len(failures))
        position += size
    failed += isolate(env, deadline, message.run_id, broken)  # those after the last good row
    newly_done = _complete_range(message, env, deadline)
    finished = _finish_run(message.run_id, env, deadline) if newly_done else None
    return Outcome(written, tuple(failed), range_done=newly_done, run_finished=finished)


def _finish_run(run_id: UUID, env: SyncEnv, deadline: Deadline) -> str | None:
    """If this range was the run's last, mark the run finished (once) and return its state."""
    if not _retried(env, deadline, lambda: env.ledger.finish_run(run_id)):
        return None
    progress = _retried(env, deadline, lambda: env.ledger.progress(run_id))
    return progress.state if progress else None


def _complete_range(message: RangeMessage, env: SyncEnv, deadline: Deadline) -> bool:
    """Mark the range done once; its count is what Postgres holds minus rows still failing."""
    run_id, first, last = message.run_id, message.range_key, message.last_id

    def count_and_mark() -> bool:
        written = env.catalog.count_range(first, last) - env.ledger.open_failures_between(run_id, first, last)
        return env.ledger.mark_range_done(run_id, first, written)

    newly_done = _retried(env, deadline, count_and_mark)
    if newly_done:
        env.telemetry.count("RangesDone")
    return newly_done


def _continue(
    message: RangeMessage, rest: Sequence[Drug], env: SyncEnv, written: int, failed: list[int], deferred: bool
) -> Outcome:
    """Enqueue the unfinished rest of the range as a new message of the same run and range."""
    continuation = RangeMessage(
        run_id=message.run_id,
        first_id=rest[0].id,
        last_id=message.last_id,
        expected_count=len(rest),
        range_first_id=message.range_key,
        continuations=message.continuations + 1,
        deferrals=message.deferrals + int(deferred),
    )
    # A deferral waits before it is seen again, doubling each time: the API needs the pause.
    delay = min(900, 2 ** (continuation.deferrals + 2)) if deferred else 0
    env.work_queue.send_messages([continuation.model_dump_json()], delay_seconds=delay)
    return Outcome(written, tuple(failed), continued_at=rest[0].id, deferred=deferred)


def sync_rows(message: RowsMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    """Sync rows that failed before; resolve every id that is now written or no longer eligible."""
    if _retried(env, deadline, lambda: env.ledger.progress(message.run_id)) is None:
        raise InvalidMessage(f"unknown run {message.run_id}")
    fetched = _retried(env, deadline, lambda: env.catalog.fetch_ids(message.ids))
    failed = isolate(env, deadline, message.run_id, fetched.broken)
    for start in range(0, len(fetched.drugs), env.chunk_size):
        chunk = fetched.drugs[start : start + env.chunk_size]
        failed += isolate(env, deadline, message.run_id, write_chunk(chunk, env, deadline))
    resolved = sorted(set(message.ids) - set(failed))
    _retried(env, deadline, lambda: env.ledger.resolve_failures(message.run_id, resolved))
    written = len(fetched.drugs) - (len(failed) - len(fetched.broken))
    return Outcome(written, tuple(failed))


def write_chunk(drugs: Sequence[Drug], env: SyncEnv, deadline: Deadline) -> list[RowFailure]:
    """Embed the chunk (isolating rejected texts) and write its documents; returns the rows that failed."""
    embedded, failures = embed_isolating(drugs, env, deadline)
    documents = [(drug.id, build_document(drug, vector, env.embedder.name)) for drug, vector in embedded]
    if documents:
        result = _retried(env, deadline, lambda: env.store.write_documents(documents))
        failures += result.failures
        if result.stale_skipped:  # a newer version was already stored: not a failure, but worth seeing
            env.telemetry.count("StaleWritesSkipped", result.stale_skipped)
    return failures


def embed_isolating(
    drugs: Sequence[Drug], env: SyncEnv, deadline: Deadline
) -> tuple[list[tuple[Drug, Vectors]], list[RowFailure]]:
    """Embed in one call; if the API rejects the batch, halve it until the rejected texts stand alone.

    k bad texts among n cost at most 1 + 2k*log2(n) calls, where trying each row alone costs n.
    """
    texts = [build_embedding_text(drug) for drug in drugs]
    try:
        vectors = _retried(env, deadline, lambda: _timed_embedding(texts, env))
    except EmbeddingError as error:
        if len(drugs) == 1:
            return [], [RowFailure(drugs[0].id, type(error).__name__, str(error))]
        middle = len(drugs) // 2
        left, left_failures = embed_isolating(drugs[:middle], env, deadline)
        right, right_failures = embed_isolating(drugs[middle:], env, deadline)
        return left + right, left_failures + right_failures
    return list(zip(drugs, vectors, strict=True)), []


def _timed_embedding(texts: Sequence[str], env: SyncEnv) -> Vectors:
    began = env.clock()
    env.telemetry.count("EmbeddingCalls")
    vectors = env.embedder.embed_texts(texts)
    env.telemetry.milliseconds("EmbeddingLatency", (env.clock() - began) * 1000)
    return vectors


def isolate(env: SyncEnv, deadline: Deadline, run_id: UUID, failures: Sequence[RowFailure]) -> list[int]:
    """Record failed rows in the ledger, then send them to the DLQ as rows messages, one per cause."""
    if not failures:
        return []
    env.telemetry.count("RowsFailed", len(failures))
    _retried(env, deadline, lambda: env.ledger.record_failures(run_id, failures))
    by_cause: dict[tuple[str, str], list[int]] = {}
    for failure in failures:
        by_cause.setdefault((failure.error_class, failure.error), []).append(failure.drug_id)
    for (error_class, error), ids in by_cause.items():
        body = RowsMessage(run_id=run_id, ids=ids, error_class=error_class, error=error[:2000])
        attributes = {"error_class": error_class, "reason": error}
        send = partial(env.dead_letters.send_messages, [body.model_dump_json()], attributes)
        _retried(env, deadline, send)
    return [failure.drug_id for failure in failures]


def _retried(env: SyncEnv, deadline: Deadline, action: Callable[[], T]) -> T:
    """Retry transient failures within what the invocation can spare."""
    return env.retry.call(action, budget_seconds=max(0.0, deadline.remaining_seconds() - env.margin_seconds))
