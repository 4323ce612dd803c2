import dataclasses
import json
import uuid

import pytest

from consumer import handler
from shared.errors import ThrottledError, UnavailableError
from shared.models import PlannedRange
from shared.settings import Settings
from tests.factories import lambda_context, range_body, sqs_event
from tests.fakes import CountingEmbedder, FakeCatalog, FakeLedger, FakeQueue, FakeStore, make_drug

RUN = uuid.uuid4()


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> handler.Consumer:
    ledger = FakeLedger()
    ledger.start_run(
        RUN, 10, None, [PlannedRange(1, 10, 10), PlannedRange(11, 20, 10), PlannedRange(21, 30, 10)]
    )
    built = handler.Consumer(
        settings=Settings(embed_batch_size=8, handoff_margin_seconds=1.0),
        catalog=FakeCatalog([make_drug(i) for i in range(1, 31)]),
        ledger=ledger,
        store=FakeStore(),
        embedder=CountingEmbedder(dimension=16),
        work_queue=FakeQueue(),
        dead_letters=FakeQueue(),
    )
    monkeypatch.setattr(handler, "_consumer", lambda: built)
    return built


def test_malformed_messages_go_straight_to_the_dlq_with_the_reason_and_the_rest_succeed(
    consumer: handler.Consumer,
) -> None:
    event = sqs_event(
        range_body(RUN, 1, 10, 10),
        "{not json",
        json.dumps({"version": 1, "run_id": str(RUN), "first_id": 9, "last_id": 3, "expected_count": 0}),
        range_body(uuid.uuid4(), 11, 20, 10),
        range_body(RUN, 21, 30, 10),
    )

    response = handler.lambda_handler(event, lambda_context())

    assert response == {"batchItemFailures": []}  # nothing left for SQS to retry uselessly
    assert isinstance(consumer.store, FakeStore)
    assert sorted(consumer.store.documents) == list(range(1, 11)) + list(range(21, 31))
    assert isinstance(consumer.dead_letters, FakeQueue)
    reasons = [attributes["reason"] for _, attributes, _ in consumer.dead_letters.sent]
    assert len(reasons) == 3
    assert "Invalid JSON" in reasons[0]
    assert "first_id 9 is greater than last_id 3" in reasons[1]
    assert "has no range 11..20" in reasons[2]
    assert consumer.dead_letters.sent[0][0] == "{not json"


def test_a_failing_range_fails_alone_and_is_left_to_sqs(consumer: handler.Consumer) -> None:
    assert isinstance(consumer.catalog, FakeCatalog)
    working = consumer.catalog.fetch_range

    def fetch(first_id: int, last_id: int):
        if first_id == 11:
            raise RuntimeError("database went away")
        return working(first_id, last_id)

    consumer.catalog.fetch_range = fetch  # type: ignore[method-assign]
    event = sqs_event(range_body(RUN, 1, 10, 10), range_body(RUN, 11, 20, 10), range_body(RUN, 21, 30, 10))

    response = handler.lambda_handler(event, lambda_context())

    assert response == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert isinstance(consumer.ledger, FakeLedger)
    assert set(consumer.ledger.done) == {(RUN, 1), (RUN, 21)}


def emitted_metrics(output: str) -> dict[str, float]:
    """Sum of each metric in the CloudWatch EMF documents the handler printed."""
    totals: dict[str, float] = {}
    for line in output.splitlines():
        if not line.startswith("{") or "_aws" not in line:
            continue
        document = json.loads(line)
        for definition in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            name = definition["Name"]
            values = document[name] if isinstance(document[name], list) else [document[name]]
            totals[name] = totals.get(name, 0) + sum(values)
    return totals


def test_throttles_and_other_transient_retries_are_counted_apart(
    consumer: handler.Consumer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the embedding API throttles twice, then answers 503 once, then works
    scripted = CountingEmbedder(
        dimension=16,
        raises=[
            ThrottledError("ThrottlingException: slow down"),
            ThrottledError("ThrottlingException: slow down"),
            UnavailableError("ServiceUnavailableException: try again"),
        ],
    )
    flaky = dataclasses.replace(consumer, embedder=scripted)
    monkeypatch.setattr(handler, "_consumer", lambda: flaky)

    response = handler.lambda_handler(sqs_event(range_body(RUN, 1, 10, 10)), lambda_context())

    assert response == {"batchItemFailures": []}
    counted = emitted_metrics(capsys.readouterr().out)
    assert counted["Throttles"] == 2
    assert counted["TransientRetries"] == 1
