"""Every run ends with a sweep of what no longer qualifies, then one finish and one announcement."""

import uuid

import pytest

from consumer.sync import sync_message
from producer.plan import start_sync
from shared.errors import InvalidMessage, UnavailableError
from shared.models import RangeMessage, RowsMessage, SweepMessage, SyncRequest, parse_message
from shared.ports import RunProgress
from tests.fakes import FakeCatalog, FakeDeadline, FakeGenerations, FakeQueue, make_drug
from tests.unit.test_sync_range import RUN, World


class RecordingAnnouncer:
    def __init__(self, failures: int = 0) -> None:
        self.announced: list[RunProgress] = []
        self.failures = failures

    def announce(self, progress: RunProgress) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("SNS Publish failed")
        self.announced.append(progress)


def announcing_world(count: int = 10, **options) -> tuple[World, RecordingAnnouncer]:
    world = World(count=count, **options)
    announcer = RecordingAnnouncer()
    world.env.announcer = announcer
    return world, announcer


def stale_document(drug_id: int) -> dict[str, object]:
    return {"id": drug_id, "name": "left over", "fingerprint": "old"}


def test_a_full_run_removes_documents_of_deleted_and_ineligible_drugs() -> None:
    # GIVEN Redis holds documents of a drug deleted from Postgres and of one made ineligible
    world, announcer = announcing_world(count=10)
    world.store.documents[99] = stale_document(99)  # no such row any more
    world.catalog.eligible.discard(5)  # the row stays, but no longer qualifies
    world.store.documents[5] = stale_document(5)

    world.drain(seconds=1000)

    assert sorted(world.store.documents) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert world.state() == "complete"
    assert world.ledger.progress(RUN).documents_removed == 2  # type: ignore[union-attr]
    assert [p.state for p in announcer.announced] == ["complete"]


def test_the_run_is_not_complete_until_its_sweep_is_done() -> None:
    world, announcer = announcing_world(count=10)
    world.store.documents[99] = stale_document(99)

    outcome = world.run()

    assert outcome.range_done is True
    assert world.state() == "sweeping"
    assert 99 in world.store.documents
    assert announcer.announced == []
    assert [type(parse_message(body)) for body in world.work_queue.bodies] == [SweepMessage]


def test_a_sweep_short_of_time_continues_from_its_cursor_and_misses_nothing() -> None:
    world, _ = announcing_world(count=10)
    world.env.sweep_page_size = 3
    for stale in (-(2**63), -7, 20, 30, 40, 2**63 - 1):
        world.store.documents[stale] = stale_document(stale)
    world.run()
    sweep = parse_message(world.work_queue.bodies[-1])

    # margin 1 s of a 1 s deadline: every invocation does one page, then hands off the rest
    invocations = world.drain(seconds=1.0, first=sweep)

    assert invocations > 3
    assert sorted(world.store.documents) == list(range(1, 11))
    assert world.state() == "complete"


def test_a_redelivered_range_already_done_finishes_a_run_its_first_consumer_left() -> None:
    # GIVEN the consumer that marked the last range done died before it took the run further
    world, announcer = announcing_world(count=10)
    world.ledger.mark_range_done(RUN, 1, 10)

    world.drain(seconds=1000)  # SQS redelivers the range message

    assert world.state() == "complete"
    assert len(announcer.announced) == 1


def test_a_run_over_zero_eligible_rows_finishes_and_removes_every_document() -> None:
    world, announcer = announcing_world(count=3, run_started=False)
    world.catalog.eligible.clear()
    summary = start_sync(
        SyncRequest(), catalog=world.catalog, ledger=world.ledger, queue=world.work_queue,
        generations=FakeGenerations(world.store), embedder_name="hashing-v1-32",
        embedding_dim=32, default_range_size=100,
    )  # fmt: skip
    world.store.documents[1] = stale_document(1)

    world.drain(seconds=1000, first=parse_message(world.work_queue.bodies[0]))

    progress = world.ledger.progress(summary.run_id)
    assert progress is not None
    assert (summary.ranges, progress.state, world.store.documents) == (0, "complete", {})
    assert [p.run_id for p in announcer.announced] == [summary.run_id]


def test_each_message_of_a_finished_run_leaves_the_announcement_at_one() -> None:
    world, announcer = announcing_world(count=10)
    world.drain(seconds=1000)

    world.run()  # a late redelivery of the range
    world.run(SweepMessage(run_id=RUN))  # and of the sweep

    assert world.ledger.finishes == 1
    assert len(announcer.announced) == 1


def test_a_failed_announcement_is_released_and_made_by_the_retry() -> None:
    world, announcer = announcing_world(count=10)
    announcer.failures = 1
    world.run()
    sweep = parse_message(world.work_queue.bodies[-1])

    with pytest.raises(RuntimeError, match="SNS"):
        world.run(sweep)  # the message fails; SQS will deliver it again
    assert world.state() == "complete"
    assert announcer.announced == []
    world.run(sweep)

    assert len(announcer.announced) == 1


def test_rows_that_no_longer_qualify_have_their_documents_removed() -> None:
    world, _ = announcing_world(count=10, broken={4: "ndc: empty"})
    world.drain(seconds=1000)
    world.catalog.eligible.discard(4)  # the broken row is withdrawn instead of fixed
    world.store.documents[4] = stale_document(4)  # written by an older run

    outcome = world.run(RowsMessage(run_id=RUN, ids=[4]))

    assert 4 not in world.store.documents
    assert outcome.documents_removed == 1
    assert world.state() == "complete"


class FlippingCatalog(FakeCatalog):
    """A drug made eligible again between the sweep's check and its delete."""

    def __init__(self, *args, flips: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.flips = flips

    def qualifying_ids(self, ids):
        kept = super().qualifying_ids(ids)
        if self.flips in kept:
            self.eligible.discard(self.flips)  # as the check reads it...
            kept.discard(self.flips)
            self.pending = True
        return kept

    def fetch_ids(self, ids):
        if getattr(self, "pending", False):
            self.eligible.add(self.flips)  # ...and eligible again by the time the delete is done
            self.pending = False
        return super().fetch_ids(ids)


def test_a_drug_that_qualifies_again_during_the_sweep_is_written_back() -> None:
    world, _ = announcing_world(count=10)
    drugs = [make_drug(i, name=f"Drug {i} 10 mg tablet") for i in range(1, 11)]
    world.catalog = world.env.catalog = FlippingCatalog(drugs, flips=6)

    world.drain(seconds=1000)

    assert sorted(world.store.documents) == list(range(1, 11))
    assert world.state() == "complete"


def test_a_range_over_the_whole_id_space_is_a_valid_message() -> None:
    message = RangeMessage(run_id=uuid.uuid4(), first_id=-(2**63), last_id=2**63 - 1, expected_count=5)
    assert parse_message(message.model_dump_json()) == message


def test_a_sweep_of_an_unknown_run_is_refused() -> None:
    world, _ = announcing_world(count=3)

    with pytest.raises(InvalidMessage, match="unknown run"):
        sync_message(SweepMessage(run_id=uuid.uuid4()), world.env, FakeDeadline(world.clock, 100))


class RefusingQueue(FakeQueue):
    def __init__(self) -> None:
        super().__init__()
        self.refusing = True

    def send_messages(self, bodies, attributes=None, delay_seconds=0) -> int:
        if self.refusing:
            raise UnavailableError("SQS SendMessageBatch: EndpointConnectionError")
        return super().send_messages(bodies, attributes, delay_seconds)


def test_a_sweep_that_could_not_be_sent_is_released_and_sent_by_the_retry() -> None:
    world, announcer = announcing_world(count=10)
    world.env.work_queue = queue = RefusingQueue()
    world.env.retry.budget_seconds = 0

    with pytest.raises(UnavailableError):
        world.run()  # the range is done, but its sweep could not be sent: the message fails
    queue.refusing = False
    world.run()  # SQS delivers it again: the range is done, the sweep is claimed again and sent

    assert [type(parse_message(body)) for body in queue.bodies] == [SweepMessage]
    world.work_queue = queue
    world.drain(seconds=1000, first=parse_message(queue.bodies[0]))
    assert world.state() == "complete"
    assert len(announcer.announced) == 1


def test_one_sweep_is_sent_however_often_the_run_is_found_with_every_range_done() -> None:
    world, _ = announcing_world(count=10)
    world.run()
    world.run()  # a redelivery
    world.run()  # and another

    assert [type(parse_message(body)) for body in world.work_queue.bodies] == [SweepMessage]


def test_a_drug_written_back_after_the_sweep_is_not_lost_when_the_write_fails_for_a_while() -> None:
    # GIVEN drug 6 qualifies again just after the sweep deleted it, and the embedder is throttled then
    world, _ = announcing_world(count=10)
    drugs = [make_drug(i, name=f"Drug {i} 10 mg tablet") for i in range(1, 11)]
    world.catalog = world.env.catalog = FlippingCatalog(drugs, flips=6)
    world.env.retry.budget_seconds = 0
    world.run()
    sweep = parse_message(world.work_queue.bodies[-1])
    world.embedder.unavailable_calls = 1  # the write-back meets throttling

    world.drain(seconds=1000, first=sweep)  # the sweep, then whatever it queued

    assert 6 in world.store.documents
    assert world.state() == "complete"


def test_a_sweep_continued_on_a_restarted_server_walks_again_from_the_start() -> None:
    world, _ = announcing_world(count=10)
    world.env.sweep_page_size = 2
    for stale in (20, 30, 40, 50, 60):
        world.store.documents[stale] = stale_document(stale)
    world.run()
    sweep = parse_message(world.work_queue.bodies[-1])
    world.run(sweep, seconds=1.0)  # one page, then a continuation carrying its cursor
    continuation = parse_message(world.work_queue.bodies[-1])
    assert isinstance(continuation, SweepMessage)
    assert continuation.cursor != 0

    world.store.restart()  # a failover: the cursor means nothing to the new primary
    world.drain(seconds=1000, first=continuation)

    assert sorted(world.store.documents) == list(range(1, 11))
    assert world.state() == "complete"


def test_a_sweep_on_a_server_whose_identity_keeps_changing_fails_instead_of_spinning() -> None:
    world, _ = announcing_world(count=10)
    world.store.documents[20] = stale_document(20)
    world.run()
    sweep = parse_message(world.work_queue.bodies[-1])
    flaps = iter(range(1_000))
    world.store.server_id = lambda: f"server-{next(flaps)}"  # type: ignore[method-assign]

    with pytest.raises(UnavailableError, match="changed 4 times during one sweep"):
        world.run(sweep)
    assert world.state() == "sweeping"


def test_a_server_that_gives_no_run_id_is_walked_once() -> None:
    world, _ = announcing_world(count=10)
    world.env.sweep_page_size = 2
    for stale in (20, 30, 40):
        world.store.documents[stale] = stale_document(stale)
    world.store.server = ""

    world.drain(seconds=1000)

    assert sorted(world.store.documents) == list(range(1, 11))
    assert world.state() == "complete"


def test_a_rows_message_whose_drug_could_not_be_written_back_leaves_it_failing() -> None:
    # GIVEN a rows message naming drug 6: ineligible when read, eligible again by the write-back's
    # read, whose write then meets throttling
    world, _ = announcing_world(count=10)
    world.env.retry.budget_seconds = 0
    world.drain(seconds=1000)
    world.catalog.eligible.discard(6)
    world.store.documents[6] = stale_document(6)
    reads, calls = world.catalog.fetch_ids, []

    def eligible_again_by_the_second_read(ids):
        calls.append(ids)
        if len(calls) == 2:  # the message's own read is done; this is the write-back's
            world.catalog.eligible.add(6)
        return reads(ids)

    world.catalog.fetch_ids = eligible_again_by_the_second_read  # type: ignore[method-assign]
    world.catalog.qualifying_ids = lambda ids: set()  # type: ignore[method-assign]
    world.embedder.unavailable_calls = 1

    outcome = world.run(RowsMessage(run_id=RUN, ids=[6]))

    assert 6 in outcome.failed_ids
    assert [f.drug_id for f in world.ledger.open_failures(RUN)] == [6]  # not resolved
    assert world.state() == "complete_with_failures"
