"""A chunk's write runs behind the preparation of the next one: nothing lost, skipped or doubled."""

import threading
import time
from collections.abc import Collection, Sequence
from typing import Any

import pytest

from consumer.pacing import Pacer
from shared.errors import InvalidMessage, QuotaWaitTooLong, UnavailableError
from shared.models import MAX_DEFERRALS, RangeMessage, RowFailure, RowsMessage
from shared.ports import WriteResult
from shared.retry import RetryPolicy
from tests.factories import record_calls
from tests.fakes import FakeClock, FakeDeadline, FakeQueue, FakeStore, RecordingTelemetry
from tests.unit.test_sync_range import World

BOTH_WAYS = pytest.mark.parametrize("threaded", [True, False], ids=["on a thread", "on the caller's thread"])


class OutageStore(FakeStore):
    """Writes fail with UnavailableError from call `first_failing` on, for `failing` calls."""

    def __init__(self, first_failing: int, failing: int = 1_000_000) -> None:
        super().__init__()
        self.first_failing, self.failing = first_failing, failing

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        call = self.write_calls + 1
        if self.first_failing <= call < self.first_failing + self.failing:
            self.write_calls += 1
            raise UnavailableError("redis: connection lost")
        return super().write_documents(documents, absent)


def world_with(store: FakeStore, threaded: bool, **options: Any) -> World:
    world = World(**options)
    world.store = world.env.store = store
    world.env.write_behind = threaded
    # No retries: the first refusal is the one the unit meets.
    world.env.retry = RetryPolicy(budget_seconds=0.0, sleep=world.clock.sleep, clock=world.clock)
    return world


@BOTH_WAYS
def test_a_write_that_fails_after_the_next_chunk_was_prepared_continues_from_its_own_chunk(
    threaded: bool,
) -> None:
    # GIVEN chunks of 10, and Redis lost from the second write on (chunk 11..20, while 21..30 is prepared)
    world = world_with(OutageStore(first_failing=2), threaded, count=30, chunk_size=10)

    outcome = world.run()

    # THEN the range is deferred from drug 11: the chunk whose write failed, not the one prepared after it
    assert sorted(world.store.documents) == list(range(1, 11))
    assert (outcome.deferred, outcome.continued_at, outcome.drugs_written) == (True, 11, 10)
    continuation = RangeMessage.model_validate_json(world.work_queue.bodies[-1])
    assert (continuation.first_id, continuation.expected_count, continuation.deferrals) == (11, 20, 1)
    assert world.ledger.done == {}


@BOTH_WAYS
def test_a_quota_hand_off_while_a_write_is_in_flight_starts_after_the_written_chunk(threaded: bool) -> None:
    # GIVEN the quota's line grows too long while the third chunk is embedded (the second being written)
    world = world_with(FakeStore(), threaded, count=30, chunk_size=10)
    world.embedder.raises = [None, None, QuotaWaitTooLong(42.0, "quota")]

    outcome = world.run()

    # THEN both chunks before it are written and the hand-off starts at the third, not deferred
    assert sorted(world.store.documents) == list(range(1, 21))
    assert (outcome.deferred, outcome.continued_at) == (False, 21)
    body, _, delay = world.work_queue.sent[-1]
    assert (RangeMessage.model_validate_json(body).first_id, delay) == (21, 42)


@BOTH_WAYS
def test_a_quota_hand_off_gives_way_to_the_failed_write_before_it(threaded: bool) -> None:
    # GIVEN the second chunk's write fails while the third chunk runs into the quota
    world = world_with(OutageStore(first_failing=2), threaded, count=30, chunk_size=10)
    world.embedder.raises = [None, None, QuotaWaitTooLong(42.0, "quota")]
    telemetry = world.env.telemetry = RecordingTelemetry()

    outcome = world.run()

    # THEN the unit is deferred from the chunk that was not written; no quota hand-off is counted
    assert (outcome.deferred, outcome.continued_at) == (True, 11)
    assert "QuotaHandoffs" not in telemetry.counts


@BOTH_WAYS
def test_broken_rows_in_a_chunk_whose_write_failed_are_isolated_once_by_the_continuation(
    threaded: bool,
) -> None:
    # GIVEN a broken row inside the second chunk, whose first write attempt is lost
    world = world_with(OutageStore(first_failing=2, failing=1), threaded, count=30, chunk_size=10,
                       broken={15: "ndc: empty", 25: "ndc: empty"})  # fmt: skip

    world.drain(seconds=1000)

    dead_ids = [i for body in world.dead_letters.bodies for i in RowsMessage.model_validate_json(body).ids]
    assert sorted(dead_ids) == [15, 25]  # each exactly once
    assert set(world.store.documents) == set(range(1, 31)) - {15, 25}
    assert world.ledger.done == {(world.message.run_id, 1): 28}


class GatedStore(FakeStore):
    """A write that waits (up to 5 s) for the next chunk's embedding to begin, and says whether it did."""

    def __init__(self, next_embedding: threading.Event) -> None:
        super().__init__()
        self.next_embedding = next_embedding
        self.overlapped: list[bool] = []

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        if not self.overlapped:  # the first chunk's write
            self.overlapped.append(self.next_embedding.wait(timeout=5.0))
        return super().write_documents(documents, absent)


def test_the_next_chunk_is_embedded_while_the_write_before_it_runs() -> None:
    world = World(count=20, chunk_size=10)
    started = threading.Event()
    world.store = world.env.store = GatedStore(started)
    record_calls(world.embedder, signal=(1, started))  # as the second chunk's embedding begins

    world.run()

    assert world.store.overlapped == [True]
    assert sorted(world.store.documents) == list(range(1, 21))


class SlowStore(FakeStore):
    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        time.sleep(0.3)
        return super().write_documents(documents, absent)


def test_no_write_outlives_the_invocation_that_started_it() -> None:
    # GIVEN the second chunk fails unexpectedly while the first one's (slow) write is in flight
    world = world_with(SlowStore(), True, count=20, chunk_size=10)
    world.embedder.raises = [None, InvalidMessage("unexpected")]

    with pytest.raises(InvalidMessage):
        world.run()

    # THEN by the time the invocation ends, the write it started has finished, and its thread with it
    assert sorted(world.store.documents) == list(range(1, 11))
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("drugsync-write")]


class FlakyStaleStore(FakeStore):
    """The first write is refused once (transient); every write finds one document stale."""

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        self.write_calls += 1
        if self.write_calls == 1:
            raise UnavailableError("redis: LOADING")
        result = super().write_documents(documents, absent)
        return WriteResult(result.failures, result.stale_skipped + 1)


def test_the_writers_retries_and_counts_reach_the_invocations_telemetry_on_its_own_thread() -> None:
    world = World(count=20, chunk_size=10)
    world.store = world.env.store = FlakyStaleStore()
    telemetry = world.env.telemetry = RecordingTelemetry()
    retried_on: list[str] = []
    world.env.retry = RetryPolicy(base_seconds=0.0, sleep=world.clock.sleep, clock=world.clock,
                                  on_retry=lambda error: retried_on.append(threading.current_thread().name))  # fmt: skip

    outcome = world.run()

    assert outcome.range_done is True
    assert sorted(world.store.documents) == list(range(1, 21))
    assert telemetry.counts["StaleWritesSkipped"] == 2
    assert retried_on == [threading.main_thread().name]


def test_the_time_left_must_hold_the_drugs_still_being_written() -> None:
    clock = FakeClock()
    pacer = Pacer(FakeDeadline(clock, 11.0), margin_seconds=1.0, seconds_per_drug=0.1)  # fits 66 drugs

    assert pacer.next_chunk_size(100, made_progress=True) == 66
    assert pacer.next_chunk_size(100, made_progress=True, in_flight=60) == 6
    assert pacer.next_chunk_size(100, made_progress=True, in_flight=66) == 0
    assert pacer.next_chunk_size(100, made_progress=True, in_flight=90) == 0  # never negative


class BrokenStore(FakeStore):
    """The second write fails with an error that is no outage (a bug, say)."""

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        if self.write_calls == 1:
            self.write_calls += 1
            raise RuntimeError("a bug in the writer")
        return super().write_documents(documents, absent)


@BOTH_WAYS
def test_a_write_that_fails_with_no_outage_fails_the_message_instead_of_deferring(threaded: bool) -> None:
    world = world_with(BrokenStore(), threaded, count=30, chunk_size=10)

    with pytest.raises(RuntimeError, match="a bug in the writer"):
        world.run()

    assert world.work_queue.bodies == []  # nothing handed on: SQS delivers the message again
    assert world.ledger.done == {}


@BOTH_WAYS
def test_a_write_that_fails_at_the_deferral_limit_fails_the_message(threaded: bool) -> None:
    world = world_with(OutageStore(first_failing=2), threaded, count=30, chunk_size=10)
    exhausted = world.message.model_copy(update={"deferrals": MAX_DEFERRALS})

    with pytest.raises(UnavailableError, match="connection lost"):
        world.run(exhausted)

    assert world.work_queue.bodies == []


class FirstSendFails(FakeQueue):
    def __init__(self) -> None:
        super().__init__()
        self.refusals = 1

    def send_messages(self, bodies: Sequence[str], attributes: Any = None, delay_seconds: int = 0) -> int:
        if self.refusals:
            self.refusals -= 1
            raise UnavailableError("sqs: unreachable")
        return super().send_messages(bodies, attributes, delay_seconds)


@BOTH_WAYS
def test_a_continuation_that_cannot_be_sent_after_a_failed_write_fails_the_message(threaded: bool) -> None:
    # GIVEN the second chunk's write fails, and so does the send of the continuation from it
    world = world_with(OutageStore(first_failing=2), threaded, count=30, chunk_size=10)
    world.work_queue = world.env.work_queue = FirstSendFails()

    # THEN the message fails (SQS delivers it again whole): no continuation skips the unwritten chunk
    with pytest.raises(UnavailableError, match="sqs: unreachable"):
        world.run()
    assert world.work_queue.bodies == []
    assert world.ledger.done == {}


@BOTH_WAYS
def test_failures_that_cannot_be_recorded_as_a_write_settles_fail_the_message(threaded: bool) -> None:
    # GIVEN Redis refuses a document of the first chunk, and the ledger is down as that chunk settles
    world = world_with(FakeStore(), threaded, count=30, chunk_size=10)
    world.store._rejects = lambda document: "ERR document too large" if document["id"] == 7 else None
    refusals = [UnavailableError("postgres: connection lost")]
    record = world.ledger.record_failures

    def record_failures(run_id: Any, failures: Sequence[RowFailure]) -> None:
        if refusals:
            raise refusals.pop()
        record(run_id, failures)

    world.ledger.record_failures = record_failures  # type: ignore[method-assign]

    # THEN the message fails: neither the refused row nor the chunk after it is passed over
    with pytest.raises(UnavailableError, match="postgres"):
        world.run()
    assert world.work_queue.bodies == []
    assert world.dead_letters.bodies == []

    # AND delivered again, it records the refused row once and completes the range
    outcome = world.run()
    assert outcome.failed_ids == (7,)
    assert world.ledger.done == {(world.message.run_id, 1): 29}


@BOTH_WAYS
def test_a_stop_after_a_failed_write_leaves_its_broken_rows_to_the_continuation(threaded: bool) -> None:
    # GIVEN a broken row in the second chunk, whose write fails while the third meets a long quota wait
    world = world_with(OutageStore(first_failing=2, failing=1), threaded, count=30, chunk_size=10,
                       broken={15: "ndc: empty"})  # fmt: skip
    world.embedder.raises = [None, None, QuotaWaitTooLong(42.0, "quota")]

    world.drain(seconds=1000)

    dead_ids = [i for body in world.dead_letters.bodies for i in RowsMessage.model_validate_json(body).ids]
    assert dead_ids == [15]
    assert set(world.store.documents) == set(range(1, 31)) - {15}


def test_the_chunks_in_flight_are_counted_against_the_time_left() -> None:
    # GIVEN 0.1 s per text, instant writes, 4 s per invocation and a 1 s margin: about 2.7 s of work
    world = world_with(FakeStore(), False, count=30, chunk_size=10, seconds_per_text=0.1)

    outcome = world.run(seconds=4.0)

    # THEN the chunks are sized so that nothing embedded is left unwritten when the time runs out
    assert outcome.continued_at == 1 + world.embedder.texts
    assert sorted(world.store.documents) == list(range(1, world.embedder.texts + 1))


class SlowFirstWrite(FakeStore):
    """The first write takes 1 s of the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        if self.write_calls == 0:
            self.clock.sleep(1.0)
        return super().write_documents(documents, absent)


def test_a_probe_measures_its_own_write() -> None:
    # GIVEN a probe of 2 drugs whose write takes 1 s, after 0.2 s of embedding: 0.6 s per drug
    world = World(count=30, chunk_size=10, seconds_per_text=0.1)
    world.store = world.env.store = SlowFirstWrite(world.clock)
    world.env.probe_chunk_size = 2
    sizes = record_calls(world.embedder)

    world.run(seconds=10.0)

    # THEN the next chunk fits the 7.8 s left at that pace (x1.5): 8 drugs, not a full chunk of 10
    assert sizes[:2] == [2, 8]


class GatedSlowFirstWrite(FakeStore):
    """The first write waits until the next chunk is being embedded, then takes 7.5 s of the fake clock."""

    def __init__(self, clock: FakeClock, next_embedding: threading.Event) -> None:
        super().__init__()
        self.clock, self.next_embedding = clock, next_embedding

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        if self.write_calls == 0:
            self.next_embedding.wait(timeout=5.0)
            self.clock.sleep(7.5)
        return super().write_documents(documents, absent)


def test_a_write_that_took_the_time_left_hands_off_before_the_next_one_starts() -> None:
    # GIVEN 10 s, a 1 s margin, 1 s to embed a chunk, and a first write that takes 7.5 s
    world = World(count=30, chunk_size=10, seconds_per_text=0.1)
    started = threading.Event()
    world.store = world.env.store = GatedSlowFirstWrite(world.clock, started)
    record_calls(world.embedder, signal=(1, started))  # as the second chunk's embedding begins

    outcome = world.run(seconds=10.0)

    # THEN with 0.5 s left after it, the second chunk is not written: the unit hands off from it
    assert outcome.continued_at == 11
    assert sorted(world.store.documents) == list(range(1, 11))
    assert world.store.write_calls == 1


class FailingSlowStore(FakeStore):
    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        time.sleep(0.2)
        raise UnavailableError("redis: connection lost")


def test_an_error_that_ends_the_unit_says_the_write_in_flight_failed_too() -> None:
    world = world_with(FailingSlowStore(), True, count=20, chunk_size=10)
    world.embedder.raises = [None, InvalidMessage("unexpected")]

    with pytest.raises(InvalidMessage) as raised:
        world.run()

    assert any("failed too" in note and "connection lost" in note for note in raised.value.__notes__)


def test_drugs_skipped_are_counted_once_when_a_write_is_lost_and_its_chunk_prepared_again() -> None:
    # GIVEN every drug written once, then the odd ones edited, and the second write of the next run lost
    world = World(count=30, chunk_size=10)
    world.drain(seconds=1000)
    for drug_id in range(1, 31, 2):
        world.catalog.drugs[drug_id] = world.catalog.drugs[drug_id].model_copy(update={"route": "topical"})
    store = OutageStore(first_failing=2, failing=1)
    store.documents = world.store.documents
    lost = world_with(store, True, count=30, chunk_size=10)
    lost.catalog, lost.ledger = world.catalog, world.ledger
    lost.env.catalog, lost.env.ledger = world.catalog, world.ledger
    telemetry = lost.env.telemetry = RecordingTelemetry()
    world.ledger.done.clear()

    lost.drain(seconds=1000)

    assert (store.write_calls, telemetry.counts["DrugsSkipped"]) == (4, 15)  # the lost write prepared twice


@BOTH_WAYS
def test_a_broken_row_before_the_first_good_one_is_isolated_when_the_first_chunk_hands_off(
    threaded: bool,
) -> None:
    # GIVEN the range's first row is broken, and the first chunk meets a long quota wait
    world = world_with(FakeStore(), threaded, count=30, chunk_size=10, broken={1: "ndc: empty"})
    world.embedder.raises = [QuotaWaitTooLong(42.0, "quota")]

    world.drain(seconds=1000)

    dead_ids = [i for body in world.dead_letters.bodies for i in RowsMessage.model_validate_json(body).ids]
    assert dead_ids == [1]
    assert set(world.store.documents) == set(range(2, 31))


def test_the_writers_retries_are_counted_on_the_invocations_policy() -> None:
    world = World(count=20, chunk_size=10)
    world.store = world.env.store = FlakyStaleStore()
    world.env.retry = RetryPolicy(base_seconds=0.0, sleep=world.clock.sleep, clock=world.clock)

    world.run()

    assert world.env.retry.retries == 1
