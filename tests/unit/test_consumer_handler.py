import json
import uuid

import pytest

from consumer import handler
from shared.settings import Settings
from tests.factories import lambda_context, range_body, sqs_event
from tests.fakes import CountingEmbedder, FakeCatalog, FakeLedger, FakeStore, make_drug


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> handler.Consumer:
    drugs = [make_drug(i) for i in range(1, 31)]
    built = handler.Consumer(
        settings=Settings(embed_batch_size=8),
        catalog=FakeCatalog(drugs),
        ledger=FakeLedger(),
        store=FakeStore(),
        embedder=CountingEmbedder(dimension=16),
    )
    monkeypatch.setattr(handler, "_consumer", lambda: built)
    return built


def test_a_malformed_message_fails_alone_and_its_reason_is_logged(
    consumer: handler.Consumer, caplog: pytest.LogCaptureFixture
) -> None:
    run = uuid.uuid4()
    event = sqs_event(
        range_body(run, 1, 10, 10),
        "{not json",
        json.dumps({"version": 1, "run_id": str(run), "first_id": 9, "last_id": 3, "expected_count": 0}),
        range_body(run, 11, 30, 20),
    )

    response = handler.lambda_handler(event, lambda_context())

    assert response == {"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m2"}]}
    assert isinstance(consumer.store, FakeStore)
    assert sorted(consumer.store.documents) == list(range(1, 31))
    failures = {r.message_id: vars(r) for r in caplog.records if r.getMessage() == "range message failed"}  # type: ignore[attr-defined]
    assert set(failures) == {"m1", "m2"}
    assert "Invalid JSON" in failures["m1"]["reason"]
    assert "first_id 9 is greater than last_id 3" in failures["m2"]["reason"]
    assert "first_id" not in failures["m1"]  # no keys left over from the previous record


def test_a_failing_range_fails_alone(consumer: handler.Consumer) -> None:
    run = uuid.uuid4()
    assert isinstance(consumer.catalog, FakeCatalog)
    broken = consumer.catalog.fetch_range

    def fetch(first_id: int, last_id: int):
        if first_id == 11:
            raise RuntimeError("database went away")
        return broken(first_id, last_id)

    consumer.catalog.fetch_range = fetch  # type: ignore[method-assign]
    event = sqs_event(range_body(run, 1, 10, 10), range_body(run, 11, 20, 10), range_body(run, 21, 30, 10))

    response = handler.lambda_handler(event, lambda_context())

    assert response == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert isinstance(consumer.ledger, FakeLedger)
    assert set(consumer.ledger.done) == {(run, 1), (run, 21)}
