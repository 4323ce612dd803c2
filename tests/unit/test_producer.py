import pytest

from producer.handler import parse_request
from producer.plan import range_size_that_fits, start_sync
from shared.errors import ConfigError
from shared.models import RangeMessage, SyncRequest
from tests.fakes import FakeCatalog, FakeLedger, FakeQueue, FakeStore, make_drug


def _catalog() -> FakeCatalog:
    drugs = [make_drug(i) for i in range(1, 2_600, 2)]  # 1,300 drugs with every other id missing
    return FakeCatalog(drugs)


def test_one_message_per_range_recorded_in_the_ledger_and_index_created_first() -> None:
    catalog, ledger, queue, store = _catalog(), FakeLedger(), FakeQueue(), FakeStore()

    summary = start_sync(
        SyncRequest(range_size=500),
        catalog=catalog, ledger=ledger, queue=queue, store=store, embedding_dim=64, default_range_size=1000,
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
        catalog=_catalog(), ledger=FakeLedger(), queue=queue, store=FakeStore(),
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
        catalog=_catalog(), ledger=FakeLedger(), queue=queue, store=FakeStore(),
        embedding_dim=64, default_range_size=1000, max_range_size=fit,
    )  # fmt: skip
    assert fit == 550
    assert summary.range_size == 550
    assert max(RangeMessage.model_validate_json(b).expected_count for b in queue.bodies) == 550
