"""Sync one message: a range (continuing itself before time runs out), rows back from the DLQ, or
the run's sweep of documents whose drug no longer qualifies; then take the run to its end if due.

Nothing written is redone because of a timeout: before the invocation would run out, the rest of
the range is handed off as a continuation. Rows that fail on their own (a broken row, a text the
embedding API rejects, a document Redis refuses) are recorded and sent to the DLQ by id while
every good row is written.
"""

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from uuid import UUID

from consumer.env import Outcome, SyncEnv, hand_off_walk, out_of_time_for_a_page, retried
from consumer.generation import retire, run_store
from consumer.pacing import Deadline, Pacer
from consumer.run_end import advance_run
from consumer.write_behind import Prepared, WriteBehind, Written, write_prepared
from shared.documents import build_document, build_embedding_text, fingerprint
from shared.errors import (
    EmbeddingError,
    InvalidMessage,
    ProviderError,
    QuotaWaitTooLong,
    RejectedTexts,
    UnavailableError,
)
from shared.models import (
    MAX_DEFERRAL_DELAY_SECONDS,
    MAX_DEFERRALS,
    AnyMessage,
    ChangesMessage,
    Drug,
    RangeMessage,
    RetireMessage,
    RowFailure,
    RowsMessage,
    SweepMessage,
    pack_rows_messages,
)
from shared.ports import Vectors

__all__ = ["Outcome", "SyncEnv", "sync_message"]
MAX_SWEEP_RESTARTS = 3  # walks begun again in one invocation before the server is called unstable


def sync_message(message: AnyMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    """Do what the message asks in the run's generation, then take the run's next step if it is due.

    One ledger round trip first heartbeats the run (its one-writer claim stays alive) and tells
    whether another run superseded it: then the message is dropped, neither written nor failed.
    A message already past this point when the supersede lands finishes its own work (at most
    one invocation), but whatever it hands on (a continuation, a sweep) is dropped in turn.
    """
    touched = retried(env, deadline, lambda: env.ledger.touch_run(message.run_id))
    if touched is not None and touched.superseded:
        env.telemetry.count("MessagesDropped")
        return Outcome(0, dropped=True)
    if isinstance(message, RetireMessage):
        outcome = retire(message, env, deadline)
        return outcome if outcome.continued_at is not None else _advanced(message, env, deadline, outcome)
    env = replace(env, store=run_store(message.run_id, env, deadline))
    if isinstance(message, RowsMessage):
        outcome = sync_rows(message, env, deadline)
    elif isinstance(message, ChangesMessage):
        outcome = sync_changes(message, env, deadline)
    elif isinstance(message, SweepMessage):
        outcome = sweep(message, env, deadline)
    else:
        outcome = sync_range(message, env, deadline)
    if outcome.continued_at is not None:
        return outcome  # the rest of this message's work is still queued
    return _advanced(message, env, deadline, outcome)


def _advanced(message: AnyMessage, env: SyncEnv, deadline: Deadline, outcome: Outcome) -> Outcome:
    announced = advance_run(message.run_id, env, deadline)
    return replace(outcome, announced=announced) if announced else outcome


def sync_range(message: RangeMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    """Write the range from message.first_id on; hand off the rest if time or the API runs short."""
    if _unit_done(message, env, deadline):
        return Outcome(0)  # already done: a redelivery pays for no embedding twice, only the run's end
    fetched = retried(env, deadline, lambda: env.catalog.fetch_range(message.first_id, message.last_id))
    return _write_unit(message, fetched.drugs, fetched.broken, env, deadline)


def sync_changes(message: ChangesMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    """Bring these changed ids in line: remove the documents of those not eligible, write the rest."""
    if _unit_done(message, env, deadline):
        return Outcome(0)
    fetched = retried(env, deadline, lambda: env.catalog.fetch_ids(message.ids))
    found = {drug.id for drug in fetched.drugs} | {row.drug_id for row in fetched.broken}
    gone = [drug_id for drug_id in message.ids if drug_id not in found]
    removed, failing = remove_unqualified(message.run_id, gone, env, deadline)
    outcome = _write_unit(message, fetched.drugs, fetched.broken, env, deadline)
    return replace(outcome, failed_ids=(*failing, *outcome.failed_ids), documents_removed=removed)


def _unit_done(message: RangeMessage | ChangesMessage, env: SyncEnv, deadline: Deadline) -> bool:
    """Whether the ledger has this range done; a range it does not hold is refused."""
    state = retried(env, deadline, lambda: env.ledger.range_state(message.run_id, message.range_key))
    if state is None or state[0] != message.last_id:
        raise InvalidMessage(f"run {message.run_id} has no range {message.range_key}..{message.last_id}")
    return state[1]


def _write_unit(
    message: RangeMessage | ChangesMessage,
    drugs: Sequence[Drug],
    broken: Sequence[RowFailure],
    env: SyncEnv,
    deadline: Deadline,
) -> Outcome:
    """Write the drugs in paced chunks, then mark the range done; hand off the rest when short of time.

    A chunk's write runs behind the preparation of the next one (WriteBehind), and is settled before
    that one is handed to the writer: a chunk counts as passed only once its write has succeeded, so a
    continuation starts at the first chunk not written.
    """
    unit = _Unit(message, drugs, broken, env, deadline)
    pacer = Pacer(deadline, env.margin_seconds, env.seconds_per_drug, env.clock)
    with WriteBehind(env, deadline, threaded=env.write_behind) as writer:
        position = 0
        while position < len(drugs):
            size = pacer.next_chunk_size(env.chunk_size, position > 0, in_flight=writer.in_flight)
            if size == 0:
                return unit.stop(writer, position)
            probe = env.probe_chunk_size if position == 0 else None
            if probe is not None:
                size = min(size, probe)  # measure this invocation's share of the quota first
            size = min(size, len(drugs) - position)
            step = partial(unit.prepare_and_pass, writer, pacer, position, size, probe is not None)
            stopped = pacer.timed(size, step, probe is not None)
            if stopped is not None:
                return stopped
            position += size
        stopped = unit.settle(writer)
        if stopped is not None:
            return stopped
    unit.pass_rows(len(drugs))  # the broken rows after the last good one
    newly_done = _complete_range(message, env, deadline, message.drugs_skipped + unit.skipped)
    return Outcome(unit.written, tuple(unit.failed), range_done=newly_done, drugs_skipped=unit.skipped)


class _Unit:
    """What a range or changes message has done so far, and where it stops.

    Broken rows are isolated as the unit passes them, so a continuation never isolates twice."""

    def __init__(
        self,
        message: RangeMessage | ChangesMessage,
        drugs: Sequence[Drug],
        broken: Sequence[RowFailure],
        env: SyncEnv,
        deadline: Deadline,
    ) -> None:
        self.message, self.drugs, self.env, self.deadline = message, drugs, env, deadline
        self.broken = sorted(broken, key=lambda row: row.drug_id)
        self.failed: list[int] = []
        self.written = 0
        self.skipped = 0

    def prepare_and_pass(
        self, writer: WriteBehind, pacer: Pacer, position: int, size: int, probe: bool
    ) -> Outcome | None:
        """Prepare the chunk at `position` while the write before it finishes, settle that write, and
        hand this chunk to the writer; an Outcome when the unit stops here. A probe's own write is
        settled too: its measure must hold the write.

        Only the preparation's own refusals hand the unit off: an error in settling (the ledger, the
        DLQ, a continuation's send) fails the message, which SQS delivers again whole."""
        try:
            prepared = prepare_chunk(self.drugs[position : position + size], self.env, self.deadline)
        except QuotaWaitTooLong as error:
            # Not a failure: the quota's line is longer than this invocation can wait. No deferral
            # is counted; the rest is seen again about when its turn would have come.
            delay = min(MAX_DEFERRAL_DELAY_SECONDS, int(error.wait_seconds))
            return self.stop(writer, position, delay=delay, handoff="QuotaHandoffs")
        except (UnavailableError, ProviderError) as error:
            return self.stop(writer, position, deferred_by=error)
        waited = writer.in_flight > 0
        stopped = self.settle(writer)
        if stopped is not None:
            return stopped
        if waited and not pacer.holds(size):
            # The write before took the time this one needs (its retries, say): hand off instead.
            return self.stop(writer, position)
        writer.submit(position, size, prepared)
        return self.settle(writer) if probe else None

    def settle(self, writer: WriteBehind) -> Outcome | None:
        """Wait for the write in flight and count it in; an Outcome if it failed and the unit stops."""
        settled = writer.settle()
        if settled is None:
            return None
        if settled.written is None:
            assert settled.error is not None
            if not isinstance(settled.error, UnavailableError | ProviderError):
                raise settled.error
            return self.stop(writer, settled.position, deferred_by=settled.error)
        result = settled.written
        self.pass_rows(settled.position)
        self.failed += isolate(self.env, self.deadline, self.message.run_id, result.failures)
        self.written += settled.size - len(result.failures) - result.skipped
        self.skipped += result.skipped
        self.env.telemetry.count("DrugsSynced", settled.size - len(result.failures))
        self.pass_rows(settled.position + settled.size)
        return None

    def pass_rows(self, position: int) -> None:
        """Isolate the broken rows before the drug at `position` (all of them at the end)."""
        if position < len(self.drugs):
            passed = [row for row in self.broken if row.drug_id < self.drugs[position].id]
        else:
            passed = self.broken
        self.failed += isolate(self.env, self.deadline, self.message.run_id, passed)
        self.broken = self.broken[len(passed) :]

    def stop(
        self,
        writer: WriteBehind,
        position: int,
        delay: int = 0,
        deferred_by: BaseException | None = None,
        handoff: str | None = None,
    ) -> Outcome:
        """Hand off the unit from `position` (or from the write in flight, should that one fail);
        `handoff` names the metric counting this kind of hand-off."""
        stopped = self.settle(writer)
        if stopped is not None:
            return stopped
        if deferred_by is not None and self.message.deferrals >= MAX_DEFERRALS:
            raise deferred_by
        if handoff is not None:
            self.env.telemetry.count(handoff)
        self.pass_rows(position)
        rest, deferred = self.drugs[position:], deferred_by is not None
        done, failed, skipped = self.written, self.failed, self.skipped
        return _continue(self.message, rest, self.env, done, failed, deferred, skipped=skipped, delay=delay)


def _complete_range(
    message: RangeMessage | ChangesMessage, env: SyncEnv, deadline: Deadline, skipped: int
) -> bool:
    """Mark the range done once, with the drugs it holds (a range: eligible rows in Postgres; changes:
    the ids it names) less the rows still failing in it, and its skipped drugs: those of the whole
    chain of messages that synced it (recorded by the first completion only)."""
    run_id, first, last = message.run_id, message.range_key, message.last_id

    def count_and_mark() -> bool:
        held = message.total if isinstance(message, ChangesMessage) else env.catalog.count_range(first, last)
        written = held - env.ledger.open_failures_between(run_id, first, last)
        return env.ledger.mark_range_done(run_id, first, written, skipped)

    newly_done = retried(env, deadline, count_and_mark)
    if newly_done:
        env.telemetry.count("RangesDone")
    return newly_done


def _continue(
    message: RangeMessage | ChangesMessage,
    rest: Sequence[Drug],
    env: SyncEnv,
    written: int,
    failed: list[int],
    deferred: bool,
    skipped: int = 0,
    delay: int = 0,
) -> Outcome:
    """Enqueue the unfinished rest of the unit as a new message of the same run and range."""
    continuation = _rest_of(message, rest[0].id, len(rest), deferred, skipped)
    # A deferral waits before it is seen again, doubling each time: the API needs the pause.
    if deferred:
        delay = min(MAX_DEFERRAL_DELAY_SECONDS, 2 ** (continuation.deferrals + 2))
    env.work_queue.send_messages([continuation.model_dump_json()], delay_seconds=delay)
    return Outcome(written, tuple(failed), continued_at=rest[0].id, deferred=deferred, drugs_skipped=skipped)


def _rest_of(
    message: RangeMessage | ChangesMessage, first_id: int, count: int, deferred: bool, skipped: int
) -> RangeMessage | ChangesMessage:
    """The continuation of a unit from first_id on: the same range key, one more continuation, and
    the drugs skipped so far (recorded once, with the range's completion)."""
    counters: dict[str, object] = {
        "range_first_id": message.range_key,
        "continuations": message.continuations + 1,
        "deferrals": message.deferrals + int(deferred),
        "drugs_skipped": message.drugs_skipped + skipped,
    }
    rest: dict[str, object]
    if isinstance(message, ChangesMessage):
        rest = {"ids": [i for i in message.ids if i >= first_id]}
    else:
        rest = {"first_id": first_id, "expected_count": count}
    # Validated as a new message is: one out of bounds fails here, before it is sent.
    return type(message).model_validate({**message.model_dump(), **rest, **counters})


def sync_rows(message: RowsMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    """Sync rows that failed before; resolve every id that is now written or no longer eligible."""
    if retried(env, deadline, lambda: env.ledger.progress(message.run_id)) is None:
        raise InvalidMessage(f"unknown run {message.run_id}")
    fetched = retried(env, deadline, lambda: env.catalog.fetch_ids(message.ids))
    failed = isolate(env, deadline, message.run_id, fetched.broken)
    skipped = 0
    for start in range(0, len(fetched.drugs), env.chunk_size):
        chunk = fetched.drugs[start : start + env.chunk_size]
        result = write_chunk(chunk, env, deadline)
        failed += isolate(env, deadline, message.run_id, result.failures)
        skipped += result.skipped
    found = {drug.id for drug in fetched.drugs} | {row.drug_id for row in fetched.broken}
    gone = [drug_id for drug_id in message.ids if drug_id not in found]
    removed, still_failing = remove_unqualified(message.run_id, gone, env, deadline)
    failed += still_failing
    resolved = sorted(set(message.ids) - set(failed))
    retried(env, deadline, lambda: env.ledger.resolve_failures(message.run_id, resolved))
    written = len(fetched.drugs) - (len(failed) - len(fetched.broken)) - skipped
    return Outcome(written, tuple(failed), documents_removed=removed, drugs_skipped=skipped)


def sweep(message: SweepMessage, env: SyncEnv, deadline: Deadline) -> Outcome:
    """Walk every document under the prefix and remove those whose drug no longer qualifies.

    A page costs one SCAN, one indexed Postgres lookup of its ids and, if needed, one UNLINK; a
    sweep that runs short of time continues itself from the SCAN cursor it reached.
    """
    progress = retried(env, deadline, lambda: env.ledger.progress(message.run_id))
    if progress is None:
        raise InvalidMessage(f"unknown run {message.run_id}")
    if progress.swept_at is not None:
        return Outcome(0)  # a duplicate sweep: the first one finished the job
    cursor, server, removed, page_seconds, restarts = message.cursor, message.server, 0, 0.0, 0
    while True:
        if out_of_time_for_a_page(page_seconds, env, deadline):
            return hand_off_walk(message, cursor, server, removed, env, deadline)
        began = env.clock()
        now_serving = retried(env, deadline, env.store.server_id)
        if server is None or _another_server(server, now_serving):  # a new walk, or a restart/failover
            restarts += server is not None
            if restarts > MAX_SWEEP_RESTARTS:
                raise UnavailableError(
                    f"the Redis server changed {restarts} times during one sweep (run_id {now_serving!r});"
                    " its SCAN cursors cannot be trusted: the sweep is retried by SQS"
                )
            cursor, server = 0, now_serving
        cursor, ids = retried(env, deadline, partial(env.store.scan_ids, cursor, env.sweep_page_size))
        removed += remove_unqualified(message.run_id, ids, env, deadline)[0]
        page_seconds = max(env.clock() - began, 1e-6)
        if cursor == 0 and not _another_server(server, retried(env, deadline, env.store.server_id)):
            break
    retried(env, deadline, lambda: env.ledger.mark_swept(message.run_id))
    return Outcome(0, documents_removed=removed)


def _another_server(walked: str, now: str) -> bool:
    """Whether another server process answers now; a server that gives no run_id cannot tell."""
    return bool(walked and now and walked != now)


def remove_unqualified(
    run_id: UUID, ids: Sequence[int], env: SyncEnv, deadline: Deadline
) -> tuple[int, list[int]]:
    """Delete the documents of those ids whose drug is not an eligible row now.

    Returns how many were removed, and the ids of drugs that qualified again but are still failing.

    A drug that qualifies again between the check and the delete (re-inserted or made eligible,
    and written meanwhile by another run) is checked once more after the delete and written back,
    so a removal never leaves a qualifying drug out.
    """
    if not ids:
        return 0, []
    keep = retried(env, deadline, lambda: env.catalog.qualifying_ids(ids))
    gone = [drug_id for drug_id in ids if drug_id not in keep]
    if not gone:
        return 0, []
    removed = retried(env, deadline, lambda: env.store.delete_documents(gone))
    back = retried(env, deadline, lambda: env.catalog.fetch_ids(gone))
    failing = isolate(env, deadline, run_id, back.broken)
    if back.drugs:
        failing += _write_back(run_id, back.drugs, env, deadline)
    env.telemetry.count("DocumentsRemoved", removed)
    retried(env, deadline, lambda: env.ledger.add_removed(run_id, removed))
    return removed, failing


def _write_back(run_id: UUID, drugs: Sequence[Drug], env: SyncEnv, deadline: Deadline) -> list[int]:
    """Write again drugs deleted a moment ago that qualify after all.

    Their keys are gone, so a retried sweep would never see them again: if the write fails for a
    while (throttling, an outage), they are recorded as failing in the run and queued as a rows
    message, which writes them when it can and resolves them. Returns the ids still failing.
    """
    try:
        return isolate(env, deadline, run_id, write_chunk(drugs, env, deadline).failures)
    except (UnavailableError, ProviderError) as error:
        ids = [drug.id for drug in drugs]
        reason = f"written back after a sweep, later: {error}"
        failures = [RowFailure(drug_id, type(error).__name__, reason) for drug_id in ids]
        retried(env, deadline, lambda: env.ledger.record_failures(run_id, failures))
        bodies = pack_rows_messages(run_id, ids, type(error).__name__, reason)
        retried(env, deadline, lambda: env.work_queue.send_messages(bodies))
        return ids


def write_chunk(drugs: Sequence[Drug], env: SyncEnv, deadline: Deadline) -> Written:
    """Embed the chunk's changed drugs (isolating rejected texts) and write their documents."""
    return write_prepared(prepare_chunk(drugs, env, deadline), env, deadline)


def prepare_chunk(drugs: Sequence[Drug], env: SyncEnv, deadline: Deadline) -> Prepared:
    """Read the chunk's stored fingerprints, then embed its changed drugs and build their documents.

    A drug whose stored document carries its fingerprint (the same fields, text template, embedder
    and dimension) is current: it is neither embedded nor written again. One with no stored document
    is written as new (see DocumentStore.write_documents).
    """
    stored = _stored_fingerprints(drugs, env, deadline)
    prints = {drug.id: fingerprint(drug, env.embedder.name) for drug in drugs}
    changed = [drug for drug in drugs if stored.get(drug.id) != prints[drug.id]]
    skipped = len(drugs) - len(changed)
    if not changed:
        return Prepared([], frozenset(), [], skipped)
    embedded, failures = embed_isolating(changed, env, deadline)
    documents = [
        (drug.id, build_document(drug, vector, env.embedder.name, prints[drug.id]))
        for drug, vector in embedded
    ]
    absent = frozenset(drug.id for drug in changed if drug.id not in stored)
    return Prepared(documents, absent, failures, skipped)


def _stored_fingerprints(drugs: Sequence[Drug], env: SyncEnv, deadline: Deadline) -> dict[int, str]:
    """The fingerprints of the chunk's stored documents, by id (one round trip; none stored: absent)."""
    if not drugs:
        return {}
    return retried(env, deadline, lambda: env.store.stored_fingerprints([drug.id for drug in drugs]))


def embed_isolating(
    drugs: Sequence[Drug], env: SyncEnv, deadline: Deadline
) -> tuple[list[tuple[Drug, Vectors]], list[RowFailure]]:
    """Embed in one call and fail only the texts the API refuses on their own.

    A provider that embeds one text per request names the refused texts beside the others' vectors
    (RejectedTexts): nothing is sent twice. For one that embeds many texts per request, the batch is
    halved until the refused texts stand alone: k bad texts among n cost at most 1 + 2k*log2(n)
    calls, where trying each row alone costs n. ProviderError (the account or model is at fault)
    is never isolated: it propagates.
    """
    texts = [build_embedding_text(drug) for drug in drugs]
    try:
        vectors = retried(env, deadline, lambda: _timed_embedding(texts, env))
    except RejectedTexts as rejected:
        embedded = [(drugs[i], vector) for i, vector in sorted(rejected.vectors.items())]
        return embedded, [_row_failure(drugs[i], error) for i, error in sorted(rejected.errors.items())]
    except EmbeddingError as error:
        if len(drugs) == 1:
            return [], [_row_failure(drugs[0], error)]
        middle = len(drugs) // 2
        left, left_failures = embed_isolating(drugs[:middle], env, deadline)
        right, right_failures = embed_isolating(drugs[middle:], env, deadline)
        return left + right, left_failures + right_failures
    return list(zip(drugs, vectors, strict=True)), []


def _row_failure(drug: Drug, error: EmbeddingError) -> RowFailure:
    return RowFailure(drug.id, type(error).__name__, str(error))


def _timed_embedding(texts: Sequence[str], env: SyncEnv) -> Vectors:
    began = env.clock()
    env.telemetry.count("EmbeddingCalls")
    env.telemetry.count("TextsEmbedded", len(texts))  # what a one-text-per-request API bills as requests
    vectors = env.embedder.embed_texts(texts)
    env.telemetry.milliseconds("EmbeddingLatency", (env.clock() - began) * 1000)
    return vectors


def isolate(env: SyncEnv, deadline: Deadline, run_id: UUID, failures: Sequence[RowFailure]) -> list[int]:
    """Record failed rows in the ledger, then send them to the DLQ as rows messages, one per cause."""
    if not failures:
        return []
    env.telemetry.count("RowsFailed", len(failures))
    retried(env, deadline, lambda: env.ledger.record_failures(run_id, failures))
    by_cause: dict[tuple[str, str], list[int]] = {}
    for failure in failures:
        by_cause.setdefault((failure.error_class, failure.error), []).append(failure.drug_id)
    for (error_class, error), ids in by_cause.items():
        bodies = pack_rows_messages(run_id, ids, error_class, error)
        attributes = {"error_class": error_class, "reason": error}
        send = partial(env.dead_letters.send_messages, bodies, attributes)
        retried(env, deadline, send)
    return [failure.drug_id for failure in failures]
