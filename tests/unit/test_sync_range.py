import uuid

from consumer.sync import sync_range
from shared.models import RangeMessage
from tests.fakes import CountingEmbedder, FakeCatalog, FakeLedger, FakeStore, make_drug

RUN = uuid.uuid4()


def _setup(count: int = 25, ineligible: frozenset[int] = frozenset()):
    drugs = [make_drug(i) for i in range(1, count + 1)]
    catalog = FakeCatalog(drugs, eligible={d.id for d in drugs} - ineligible)
    return catalog, CountingEmbedder(dimension=32), FakeStore(), FakeLedger()


def _sync(catalog, embedder, store, ledger, message: RangeMessage, chunk_size: int = 10):
    return sync_range(
        message, catalog=catalog, embedder=embedder, store=store, ledger=ledger, chunk_size=chunk_size
    )


def test_every_eligible_drug_of_the_range_is_written_with_its_embedding() -> None:
    catalog, embedder, store, ledger = _setup(ineligible=frozenset({3, 7}))
    message = RangeMessage(run_id=RUN, first_id=1, last_id=20, expected_count=18)

    result = _sync(catalog, embedder, store, ledger, message)

    assert sorted(store.documents) == [i for i in range(1, 21) if i not in (3, 7)]
    document = store.documents[1]
    assert len(document["embedding"]) == 32
    assert document["name"] == "Amoxicillin 500 mg capsule"
    assert len(document["fingerprint"]) == 32
    assert result.drugs_written == 18
    assert ledger.done[(RUN, 1)] == 18


def test_embeds_in_batches_never_one_call_per_drug() -> None:
    catalog, embedder, store, ledger = _setup(count=25)
    message = RangeMessage(run_id=RUN, first_id=1, last_id=25, expected_count=25)

    _sync(catalog, embedder, store, ledger, message, chunk_size=10)

    assert embedder.calls == 3
    assert embedder.texts == 25


def test_a_redelivered_range_does_not_count_twice() -> None:
    catalog, embedder, store, ledger = _setup(count=10)
    message = RangeMessage(run_id=RUN, first_id=1, last_id=10, expected_count=10)

    first = _sync(catalog, embedder, store, ledger, message)
    documents_after_first = dict(store.documents)
    second = _sync(catalog, embedder, store, ledger, message)

    assert first.newly_done is True
    assert second.newly_done is False
    assert store.documents == documents_after_first
    assert ledger.done == {(RUN, 1): 10}
