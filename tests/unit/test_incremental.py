"""Incremental runs with fakes: the producer's choice of changes, and the consumer's changes messages."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.run_end import advance_run
from consumer.sync import SyncEnv, sync_message
from producer.plan import resume_run, start_sync
from shared.errors import ConfigError, RunActive
from shared.models import (
    BIGINT_MAX,
    BIGINT_MIN,
    MAX_BODY_BYTES,
    MAX_DEFERRALS,
    MAX_ROWS_PER_MESSAGE,
    ChangesMessage,
    PlannedRange,
    RowFailure,
    SweepMessage,
    SyncRequest,
    pack_changes,
    parse_message,
)
from shared.retry import RetryPolicy
from tests.fakes import (
    CountingEmbedder,
    FakeCatalog,
    FakeChangeFeed,
    FakeClock,
    FakeDeadline,
    FakeGenerations,
    FakeLedger,
    FakeQueue,
    FakeStore,
    make_drug,
)

INCREMENTAL = SyncRequest(mode="incremental")
NOW = datetime.now(UTC)
EMBEDDER = "hashing-32"


class Producer:
    """A catalog of drugs 1..20 with its change feed, ledger and queue."""

    def __init__(self, installed_at: datetime | None = NOW - timedelta(hours=1)) -> None:
        self.catalog = FakeCatalog([make_drug(i) for i in range(1, 21)])
        self.changes = FakeChangeFeed(installed_at)
        self.ledger, self.queue, self.store = FakeLedger(self.changes), FakeQueue(), FakeStore()
        self.generations = FakeGenerations(self.store)
        self.generations.switch(self.generations.begin(EMBEDDER, 32, "the first full run").number)

    def start(self, request: SyncRequest = INCREMENTAL):
        return start_sync(
            request, catalog=self.catalog, ledger=self.ledger, queue=self.queue, generations=self.generations,
            embedder_name=EMBEDDER, embedding_dim=32, default_range_size=100, changes=self.changes, overlap_seconds=600,
        )  # fmt: skip

    def complete_full_run(self, started: datetime) -> uuid.UUID:
        run_id = uuid.uuid4()
        self.ledger.start_run(run_id, 100, None, [], source_table="drugs", swept=True)
        self.ledger.runs[run_id].update(started=started, watermark=started)
        assert self.ledger.finish_run(run_id)
        return run_id

    def sent(self) -> list[Any]:
        return [parse_message(body) for body in self.queue.bodies]


def test_an_incremental_run_is_refused_until_a_full_run_started_after_capture_was_installed() -> None:
    producer = Producer()
    producer.complete_full_run(started=NOW - timedelta(hours=2))  # before the install: not a base
    producer.changes.record(3, 8)
    with pytest.raises(ConfigError, match="run `drugsync sync` first"):
        producer.start()
    assert producer.queue.bodies == []
    assert producer.changes.rows == [[3, None], [8, None]]  # nothing claimed by a refused run


def test_an_incremental_run_refused_by_the_active_run_takes_none_of_its_changes() -> None:
    producer = Producer()
    producer.complete_full_run(started=NOW)
    producer.changes.record(4, 9)
    active = producer.start().run_id
    producer.changes.record(11)

    with pytest.raises(RunActive, match=str(active)):
        producer.start()

    assert producer.changes.rows == [[4, active], [9, active], [11, None]]


def test_a_capture_run_tries_again_the_rows_still_failing_in_its_full_base_run() -> None:
    producer = Producer()
    base = producer.complete_full_run(started=NOW)
    producer.ledger.record_failures(base, [RowFailure(12, "RowError", "bad")])  # in no change table
    producer.changes.record(3)

    summary = producer.start()

    assert (summary.changes_source, summary.changed_ids) == ("capture", 2)
    assert producer.sent()[0].ids == [3, 12]


def test_with_capture_the_claimed_ids_are_enqueued_sorted_and_the_run_needs_no_sweep() -> None:
    producer = Producer()
    producer.complete_full_run(started=NOW)
    producer.changes.record(7, 3, 7, 999)

    summary = producer.start()

    assert (summary.mode, summary.changes_source, summary.changed_ids) == ("incremental", "capture", 3)
    [message] = producer.sent()
    assert isinstance(message, ChangesMessage)
    assert (message.ids, message.total) == ([3, 7, 999], 3)
    progress = producer.ledger.progress(summary.run_id)
    assert progress is not None
    assert (progress.mode, progress.total_ranges, progress.eligible_drugs) == ("incremental", 1, 3)
    assert progress.swept_at is not None  # every deletion was captured: no sweep


def test_a_truncate_since_the_last_complete_run_makes_a_capture_run_sweep() -> None:
    producer = Producer()
    producer.complete_full_run(started=NOW - timedelta(minutes=10))
    producer.changes.truncated_at = NOW - timedelta(minutes=5)  # row triggers saw none of its rows
    progress = producer.ledger.progress(producer.start().run_id)
    assert progress is not None
    assert progress.swept_at is None  # the run's sweep removes what the TRUNCATE took

    producer.changes.truncated_at = NOW - timedelta(minutes=20)  # before the base run: it swept
    again = INCREMENTAL.model_copy(update={"supersede": True})  # the first run is still active
    progress = producer.ledger.progress(producer.start(again).run_id)
    assert progress is not None
    assert progress.swept_at is not None


def test_with_nothing_changed_the_run_still_gets_its_end() -> None:
    producer = Producer()
    producer.complete_full_run(started=NOW)

    summary = producer.start()

    assert summary.changed_ids == 0
    assert [type(m) for m in producer.sent()] == [SweepMessage]  # the one message that ends it
    progress = producer.ledger.progress(summary.run_id)
    assert progress is not None
    assert progress.total_ranges == 0


def test_without_capture_the_watermark_reads_since_the_last_complete_run_less_the_overlap() -> None:
    producer = Producer(installed_at=None)
    started = NOW - timedelta(days=1)
    base = producer.complete_full_run(started=started)
    producer.changes.updated = {
        4: started - timedelta(seconds=599),  # inside the overlap
        5: started - timedelta(seconds=601),  # before it: synced by the base run
        6: NOW,
    }
    producer.ledger.record_failures(base, [])

    summary = producer.start()

    assert (summary.changes_source, summary.changed_ids) == ("watermark", 2)
    assert producer.sent()[0].ids == [4, 6]
    progress = producer.ledger.progress(summary.run_id)
    assert progress is not None
    assert progress.swept_at is None  # the sweep finds what was deleted


def test_the_watermark_tries_again_the_rows_still_failing_in_the_last_complete_run() -> None:
    producer = Producer(installed_at=None)
    base = producer.complete_full_run(started=NOW - timedelta(days=1))
    producer.ledger.record_failures(base, [RowFailure(12, "RowError", "bad")])

    assert producer.start().changed_ids == 1
    assert producer.sent()[0].ids == [12]


def test_half_installed_capture_is_refused_rather_than_trusted() -> None:
    producer = Producer()
    producer.complete_full_run(started=NOW)
    producer.changes.triggers = 1  # one trigger dropped by hand
    with pytest.raises(ConfigError, match="incomplete"):
        producer.start()


def test_an_incremental_request_takes_no_range_size_or_cap() -> None:
    with pytest.raises(ValueError, match="do not apply"):
        SyncRequest(mode="incremental", max_drugs=10)


RUN = uuid.uuid4()


class Consumer:
    """Drugs 1..30 synced once; a capture run of changed ids over them."""

    def __init__(self, ids: list[int], chunk_size: int = 10) -> None:
        self.clock = FakeClock()
        self.catalog = FakeCatalog([make_drug(i, name=f"Drug {i}") for i in range(1, 31)])
        self.changes = FakeChangeFeed(NOW)
        self.changes.record(*ids)
        self.store, self.ledger = FakeStore(), FakeLedger(self.changes)
        self.embedder = CountingEmbedder(dimension=32, clock=self.clock, seconds_per_text=0.1)
        self.queue = FakeQueue()
        self.env = SyncEnv(
            catalog=self.catalog, embedder=self.embedder, store=self.store, ledger=self.ledger,
            work_queue=self.queue, dead_letters=FakeQueue(),
            retry=RetryPolicy(base_seconds=1.0, budget_seconds=30.0, sleep=self.clock.sleep, clock=self.clock),
            chunk_size=chunk_size, margin_seconds=1.0, seconds_per_drug=0.1, clock=self.clock,
        )  # fmt: skip
        claimed = self.changes.claim(RUN)
        self.ledger.start_run(RUN, 1000, None, [PlannedRange(claimed[0], claimed[-1], len(claimed))],
                              mode="incremental", source_table="drugs", changes_source="capture", swept=True)  # fmt: skip
        self.message = ChangesMessage(run_id=RUN, ids=claimed, total=len(claimed))

    def run(self, message: ChangesMessage | None = None, seconds: float = 1000.0):
        return sync_message(message or self.message, self.env, FakeDeadline(self.clock, seconds))


def test_a_changes_message_writes_the_eligible_removes_the_rest_and_the_run_releases_its_changes() -> None:
    consumer = Consumer([2, 5, 8, 40])
    for drug_id in (2, 5, 8, 40):  # 40 was synced once, then deleted from the catalog
        consumer.store.documents[drug_id] = {"id": drug_id, "fingerprint": "as synced before"}
    consumer.catalog.eligible.discard(5)  # de-listed

    outcome = consumer.run()

    assert sorted(consumer.store.documents) == [2, 8]
    assert (outcome.drugs_written, outcome.documents_removed, outcome.range_done) == (2, 2, True)
    assert consumer.embedder.texts == 2  # only the two changed eligible drugs were embedded
    assert consumer.ledger.done == {(RUN, 2): 4}
    progress = consumer.ledger.progress(RUN)
    assert progress is not None
    assert progress.state == "complete"
    assert consumer.changes.rows == []  # released with the finish


def test_a_changes_message_short_of_time_continues_with_the_ids_left_under_the_same_range() -> None:
    consumer = Consumer(list(range(1, 26)), chunk_size=5)

    first = consumer.run(seconds=3.0)  # two chunks of 5 at 0.5 s, then less than the margin remains

    assert first.continued_at is not None
    [rest] = [parse_message(body) for body in consumer.queue.bodies]
    assert isinstance(rest, ChangesMessage)
    assert rest.ids == list(range(first.continued_at, 26))
    assert (rest.range_key, rest.last_id, rest.total, rest.continuations) == (1, 25, 25, 1)
    assert consumer.changes.rows[0][1] == RUN  # nothing released before the run completes
    assert consumer.ledger.progress(RUN).state == "running"  # type: ignore[union-attr]

    consumer.run(rest)
    assert sorted(consumer.store.documents) == list(range(1, 26))
    assert consumer.ledger.done == {(RUN, 1): 25}
    assert consumer.changes.rows == []


def test_a_run_that_never_finishes_releases_nothing() -> None:
    consumer = Consumer([3, 4])
    consumer.ledger.start_run(RUN, 1000, None, [PlannedRange(3, 4, 2), PlannedRange(9, 9, 1)], supersede=True,
                              mode="incremental", source_table="drugs", changes_source="capture", swept=True)  # fmt: skip
    consumer.run()
    assert advance_run(RUN, consumer.env, FakeDeadline(consumer.clock, 100)) is None
    assert [row[0] for row in consumer.changes.rows] == [3, 4]


@given(ids=st.lists(st.integers(BIGINT_MIN, BIGINT_MAX), max_size=3000))
def test_changes_are_packed_once_each_in_order_within_the_message_limits_even_as_continuations(
    ids: list[int],
) -> None:
    units = pack_changes(RUN, ids)
    assert [i for unit in units for i in unit] == sorted(set(ids))
    for unit in units:
        assert len(unit) <= MAX_ROWS_PER_MESSAGE
        widest = ChangesMessage(run_id=RUN, ids=unit, total=MAX_ROWS_PER_MESSAGE, range_first_id=BIGINT_MIN,
                                continuations=1_000_000, deferrals=MAX_DEFERRALS)  # fmt: skip
        assert len(widest.model_dump_json().encode()) <= MAX_BODY_BYTES


def test_an_unfinished_incremental_run_is_not_resumed_with_range_messages_but_taken_up_by_a_new_run() -> None:
    producer = Producer()
    producer.complete_full_run(started=NOW)
    producer.changes.record(4, 9)
    summary = producer.start()
    producer.queue.bodies.clear()  # its messages were lost

    with pytest.raises(ConfigError, match="--supersede`, which takes up its changes"):
        resume_run(summary.run_id, ledger=producer.ledger, queue=producer.queue)
    assert producer.queue.bodies == []

    again = producer.start(INCREMENTAL.model_copy(update={"supersede": True}))
    assert [m.ids for m in producer.sent()] == [[4, 9]]  # the same changes, claimed again
    assert again.changed_ids == 2


def test_a_stalled_incremental_run_is_advised_a_new_incremental_run_not_a_resume() -> None:
    from console.status import advice

    assert "sync --incremental" in (advice({"run_id": "r", "mode": "incremental", "state": "stalled"}) or "")
    assert "resume" in (advice({"run_id": "r", "mode": "full", "state": "stalled"}) or "")
