"""Producer -> SQS -> concurrency-limited consumers -> Redis, on the real servers."""

import json
import uuid
from typing import Any

import pytest

from console.event_source import EventSourceConfig, LocalEventSource
from console.seed import seed_drugs
from console.services import Services
from console.status import gather_counts
from shared.documents import fingerprint
from shared.models import RangeMessage, SyncRequest
from shared.redis_store import RedisDocumentStore
from tests.conftest import Isolated

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_services(request: pytest.FixtureRequest):
    opened: list[Services] = []

    def build(env: Isolated) -> Services:
        opened.append(Services(env.settings))
        return opened[-1]

    yield build
    for services in opened:
        services.close()


def _consume(sqs, queue_url: str | None, **overrides: Any) -> LocalEventSource:
    assert queue_url is not None
    options: dict[str, Any] = {
        "batch_size": 2,
        "max_concurrency": 2,
        "function_timeout": 60.0,
        "wait_seconds": 0,
    }
    options.update(overrides)
    source = LocalEventSource(sqs, EventSourceConfig(queue_url=queue_url, until_empty=True, **options))
    source.run()
    return source


def _current(services: Services) -> RedisDocumentStore:
    """The store of the generation readers use now: where a run's documents are once it is complete."""
    current = services.generations.read().current
    assert current is not None
    return services.generations.store(current)


def _stored(services: Services, drug_id: int) -> dict[str, Any]:
    store = _current(services)
    raw = store.client.execute_command("JSON.GET", store.key(drug_id))  # type: ignore[no-untyped-call]
    document: dict[str, Any] = json.loads(raw)
    return document


def test_a_run_puts_every_eligible_drug_in_redis_current(
    test_env: Isolated, sqs, stack_services, tmp_path
) -> None:
    services = stack_services(test_env)
    eligible = seed_drugs(services.conn, test_env.settings, 3_000)
    log = tmp_path / "consumer.log"

    summary = services.producer.start(SyncRequest(range_size=250))
    source = _consume(sqs, test_env.settings.queue_url, log_path=str(log))

    counts = gather_counts(services.catalog, _current(services))
    assert (counts.postgres_eligible, counts.redis_documents, counts.index_documents) == (eligible,) * 3
    assert counts.index_failures == 0
    progress = services.ledger.progress(summary.run_id)
    assert progress is not None
    assert progress.complete
    assert progress.drugs_done == eligible == summary.eligible_drugs
    assert source.stats.succeeded == summary.ranges + 1  # and the run's sweep
    assert source.stats.failed == 0
    # Not counts alone: each document carries the fingerprint of its row as Postgres has it now.
    embedder_name = services.embedder.name
    for planned in services.catalog.plan_ranges(1000, None):
        for drug in services.catalog.fetch_range(planned.first_id, planned.last_id).drugs:
            assert _stored(services, drug.id)["fingerprint"] == fingerprint(drug, embedder_name)


def _log_lines(path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_consumer_logs_are_json_with_the_run_id_and_metrics_are_emf(
    test_env: Isolated, sqs, stack_services, tmp_path
) -> None:
    services = stack_services(test_env)
    seed_drugs(services.conn, test_env.settings, 600)
    log = tmp_path / "consumer.log"

    summary = services.producer.start(SyncRequest(range_size=200))
    _consume(sqs, test_env.settings.queue_url, log_path=str(log))

    lines = _log_lines(log)  # every line parses as JSON, or this fails
    synced = [line for line in lines if line.get("message") == "message synced"]
    assert len(synced) == summary.ranges + 1  # and the run's sweep
    assert {line["run_id"] for line in synced} == {str(summary.run_id)}
    finished = [line for line in lines if line.get("message") == "run finished"]
    assert [(line["run_id"], line["state"]) for line in finished] == [(str(summary.run_id), "complete")]
    emf = [line["_aws"] for line in lines if "_aws" in line]
    assert emf, "no EMF metrics were emitted"
    names = {m["Name"] for blob in emf for d in blob["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"DrugsSynced", "RangesDone", "EmbeddingCalls", "EmbeddingLatency", "RunsFinished"} <= names
    assert {d["Namespace"] for blob in emf for d in blob["CloudWatchMetrics"]} == {"drugsync"}
    # EMF keeps every value of a metric added within one flush, as a list
    values = [line.get("DrugsSynced", []) for line in lines if "_aws" in line]
    drugs_synced = sum(sum(v) if isinstance(v, list) else v for v in values)
    assert drugs_synced == summary.eligible_drugs


def test_a_redelivered_range_changes_neither_documents_nor_ledger(
    test_env: Isolated, sqs, stack_services
) -> None:
    services = stack_services(test_env)
    seed_drugs(services.conn, test_env.settings, 600)
    summary = services.producer.start(SyncRequest(range_size=200))
    _consume(sqs, test_env.settings.queue_url)
    before = services.ledger.progress(summary.run_id)
    planned = services.catalog.plan_ranges(200, None)[1]

    services.queue.send_messages([RangeMessage.for_range(summary.run_id, planned).model_dump_json()] * 2)
    _consume(sqs, test_env.settings.queue_url)

    assert services.ledger.progress(summary.run_id) == before
    assert before is not None
    assert gather_counts(services.catalog, _current(services)).redis_documents == before.drugs_done


def test_a_malformed_message_goes_straight_to_the_dlq_and_the_rest_succeed(
    test_env: Isolated, sqs, stack_services
) -> None:
    # a 60 s visibility timeout: on a slow machine a 2 s one lets SQS hand the message out twice
    services = stack_services(test_env)
    seed_drugs(services.conn, test_env.settings, 400)
    summary = services.producer.start(SyncRequest(range_size=100))
    bad = json.dumps(
        {"version": 9, "run_id": str(uuid.uuid4()), "first_id": 1, "last_id": 2, "expected_count": 1}
    )
    services.queue.send_messages([bad])

    source = _consume(sqs, test_env.settings.queue_url, batch_size=5)

    progress = services.ledger.progress(summary.run_id)
    assert progress is not None
    assert progress.complete
    dead = sqs.receive_message(
        QueueUrl=test_env.settings.dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    assert [m["Body"] for m in dead] == [bad]
    assert dead[0]["MessageAttributes"]["reason"]["StringValue"] == "version: Input should be 1"
    assert source.stats.failed == 0  # rejected on its first receive, not retried


def test_an_overrunning_invocation_is_killed_and_its_message_left_to_sqs(
    fragile_env: Isolated, sqs, stack_services
) -> None:
    test_env = fragile_env
    services = stack_services(test_env)
    services.queue.send_messages(["{}"])

    source = _consume(
        sqs, test_env.settings.queue_url,
        handler="tests.integration.handlers:overrunning_handler", function_timeout=1.0, max_concurrency=1,
    )  # fmt: skip

    assert source.stats.timeouts == 2
    assert source.stats.cold_starts == 2  # the killed process is replaced, as Lambda does
    dead = sqs.receive_message(QueueUrl=test_env.settings.dlq_url)["Messages"]
    assert [m["Body"] for m in dead] == ["{}"]


def test_a_crashing_invocation_fails_its_whole_batch(fragile_env: Isolated, sqs, stack_services) -> None:
    test_env = fragile_env
    services = stack_services(test_env)
    services.queue.send_messages(["a", "b"])

    source = _consume(sqs, test_env.settings.queue_url, handler="tests.integration.handlers:crashing_handler")

    assert source.stats.errors >= 1
    assert source.stats.succeeded == 0
    dead = sqs.receive_message(QueueUrl=test_env.settings.dlq_url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in dead) == ["a", "b"]
