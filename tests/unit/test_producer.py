import itertools
import uuid

import pytest

from producer.handler import parse_request
from producer.plan import range_size_that_fits, resume_run, start_sync
from shared.errors import ConfigError, EnqueueFailed, UnavailableError
from shared.models import RangeMessage, SweepMessage, SyncRequest, parse_message
from tests.fakes import FakeCatalog, FakeGenerations, FakeLedger, FakeQueue, FakeStore, make_drug

EMBEDDER = "hashing-v1-64"


def _catalog() -> FakeCatalog:
    drugs = [make_drug(i) for i in range(1, 2_600, 2)]  # 1,300 drugs with every other id missing
    return FakeCatalog(drugs)


def test_one_message_per_range_recorded_in_the_ledger_and_index_created_first() -> None:
    catalog, ledger, queue, store = _catalog(), FakeLedger(), FakeQueue(), FakeStore()

    summary = start_sync(
        SyncRequest(range_size=500),
        catalog=catalog, ledger=ledger, queue=queue, generations=FakeGenerations(store), embedder_name=EMBEDDER, embedding_dim=64, default_range_size=1000,
    )  # fmt: skip

    messages = [RangeMessage.model_validate_json(body) for body in queue.bodies]
    assert summary.ranges == 3 == len(messages)
    assert summary.eligible_drugs == 1_300
    assert [m.expected_count for m in messages] == [500, 500, 300]
    assert {m.run_id for m in messages} == {summary.run_id}
    assert store.index_dimension == 64
    assert len(ledger.runs[summary.run_id]["ranges"]) == 3


def test_max_drugs_caps_a_proof_of_concept_run() -> None:
    queue = FakeQueue()
    summary = start_sync(
        SyncRequest(max_drugs=120),
        catalog=_catalog(), ledger=FakeLedger(), queue=queue, generations=FakeGenerations(), embedder_name=EMBEDDER,
        embedding_dim=64, default_range_size=50,
    )  # fmt: skip
    assert summary.eligible_drugs == 120
    assert summary.ranges == 3
    assert summary.range_size == 50


@pytest.mark.parametrize("event", [{"range_size": 0}, {"max_drugs": "many"}, {"rangesize": 10}])
def test_a_wrong_producer_event_names_the_field(event: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="invalid producer event"):
        parse_request(event)


def test_ranges_are_sized_to_finish_well_inside_the_consumer_timeout() -> None:
    queue = FakeQueue()
    # 120 s timeout, 10 s margin, 0.1 s a drug: half the usable time holds 550 drugs
    fit = range_size_that_fits(120, 10, 0.1)
    summary = start_sync(
        SyncRequest(range_size=1000),
        catalog=_catalog(), ledger=FakeLedger(), queue=queue, generations=FakeGenerations(), embedder_name=EMBEDDER,
        embedding_dim=64, default_range_size=1000, max_range_size=fit,
    )  # fmt: skip
    assert fit == 550
    assert summary.range_size == 550
    assert max(RangeMessage.model_validate_json(b).expected_count for b in queue.bodies) == 550


class FailingQueue(FakeQueue):
    """Accepts `accepts` messages, then fails as SQS would when it cannot be reached."""

    def __init__(self, accepts: int) -> None:
        super().__init__()
        self.accepts = accepts

    def send_messages(self, bodies, attributes=None, delay_seconds=0) -> int:
        if len(self.bodies) + len(bodies) > self.accepts:
            raise UnavailableError("SQS SendMessageBatch: EndpointConnectionError")
        return super().send_messages(bodies, attributes, delay_seconds)


def test_a_run_whose_enqueue_fails_is_recorded_as_such_and_resumes_to_every_range() -> None:
    # GIVEN SQS fails while the producer sends a run's messages
    catalog, ledger, store = _catalog(), FakeLedger(), FakeStore()
    queue = FailingQueue(accepts=0)
    with pytest.raises(EnqueueFailed, match="drugsync resume") as failed:
        start_sync(
            SyncRequest(range_size=500),
            catalog=catalog, ledger=ledger, queue=queue, generations=FakeGenerations(store), embedder_name=EMBEDDER, embedding_dim=64,
            default_range_size=1000,
        )  # fmt: skip
    run_id = ledger.latest_run_id()
    assert run_id is not None
    assert str(run_id) in str(failed.value)
    progress = ledger.progress(run_id)
    assert progress is not None
    assert progress.state == "enqueue_failed"
    assert "EndpointConnectionError" in (progress.enqueue_error or "")

    # WHEN SQS is back, one range was done meanwhile, and the operator resumes the run
    ledger.mark_range_done(run_id, ledger.undone_ranges(run_id)[0].first_id, 500)
    queue.accepts = 100
    sent = resume_run(run_id, ledger=ledger, queue=queue)

    # THEN exactly the ranges not done are sent again, and the run is running again
    resent = [RangeMessage.model_validate_json(body) for body in queue.bodies]
    assert sent == 2
    assert [m.first_id for m in resent] == [r.first_id for r in ledger.undone_ranges(run_id)]
    assert ledger.progress(run_id).state == "running"  # type: ignore[union-attr]


def test_a_run_with_every_range_done_resumes_with_its_sweep() -> None:
    catalog, ledger, queue, store = _catalog(), FakeLedger(), FakeQueue(), FakeStore()
    summary = start_sync(
        SyncRequest(range_size=1000),
        catalog=catalog, ledger=ledger, queue=queue, generations=FakeGenerations(store), embedder_name=EMBEDDER, embedding_dim=64, default_range_size=1000,
    )  # fmt: skip
    for planned in ledger.undone_ranges(summary.run_id):
        ledger.mark_range_done(summary.run_id, planned.first_id, planned.drug_count)
    queue.bodies.clear()

    assert resume_run(summary.run_id, ledger=ledger, queue=queue) == 1

    assert [type(parse_message(body)) for body in queue.bodies] == [SweepMessage]


def test_resuming_an_unknown_run_names_it() -> None:
    unknown = uuid.uuid4()
    with pytest.raises(ConfigError, match=f"no run {unknown}"):
        resume_run(unknown, ledger=FakeLedger(), queue=FakeQueue())


def test_a_full_run_covers_the_whole_bigint_space_and_a_capped_one_only_what_it_planned() -> None:
    queue = FakeQueue()
    start_sync(
        SyncRequest(range_size=500),
        catalog=_catalog(), ledger=FakeLedger(), queue=queue, generations=FakeGenerations(), embedder_name=EMBEDDER,
        embedding_dim=64, default_range_size=1000,
    )  # fmt: skip
    full = [RangeMessage.model_validate_json(body) for body in queue.bodies]
    assert (full[0].first_id, full[-1].last_id) == (-(2**63), 2**63 - 1)
    assert all(a.last_id + 1 == b.first_id for a, b in itertools.pairwise(full))

    capped_queue = FakeQueue()
    start_sync(
        SyncRequest(range_size=500, max_drugs=120),
        catalog=_catalog(), ledger=FakeLedger(), queue=capped_queue, generations=FakeGenerations(), embedder_name=EMBEDDER,
        embedding_dim=64, default_range_size=1000,
    )  # fmt: skip
    capped = RangeMessage.model_validate_json(capped_queue.bodies[0])
    assert (capped.first_id, capped.last_id) == (1, 239)
