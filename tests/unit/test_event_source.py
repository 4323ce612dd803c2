import json
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from moto import mock_aws

from console.event_source import EventSourceConfig, LocalEventSource

HANDLER = "tests.unit.event_source_handlers:partial_failures"


@pytest.fixture
def sqs():
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def _queue_with_dlq(sqs) -> tuple[str, str]:
    """A work queue whose messages go to the DLQ after one receive, and come back 1 s after a failure."""
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "1"})
    attributes = {"VisibilityTimeout": "1", "RedrivePolicy": redrive}
    return sqs.create_queue(QueueName="work", Attributes=attributes)["QueueUrl"], dlq


def _bodies(sqs, url: str) -> set[str]:
    bodies: set[str] = set()
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        bodies |= {m["Body"] for m in batch}
    return bodies


def _run_until_empty(sqs, url: str, batch_size: int = 10):
    config = EventSourceConfig(
        queue_url=url, handler=HANDLER, batch_size=batch_size, max_concurrency=1, until_empty=True
    )
    return LocalEventSource(sqs, config).run()


@pytest.mark.parametrize(
    ("bodies", "dead"),
    [
        (["ok-1", "fail-1", "ok-2", "fail-2", "ok-3"], {"fail-1", "fail-2"}),
        (["ok-1", "raise"], {"ok-1", "raise"}),  # the invocation failed: every record fails
        (["ok-1", "malformed"], {"ok-1", "malformed"}),  # an unknown itemIdentifier fails the batch
    ],
    ids=["partial", "invocation-failed", "malformed-response"],
)
def test_only_the_records_the_handler_did_not_report_are_deleted(
    sqs, bodies: list[str], dead: set[str]
) -> None:
    # GIVEN one batch of records, some of which the handler reports (or the invocation fails)
    work, dlq = _queue_with_dlq(sqs)
    for body in bodies:
        sqs.send_message(QueueUrl=work, MessageBody=body)

    # WHEN the event source runs until the queue is empty
    stats = _run_until_empty(sqs, work)

    # THEN the successes were deleted, and only the failures came back and went on to the DLQ
    assert _bodies(sqs, dlq) == dead
    assert _bodies(sqs, work) == set()
    assert (stats.succeeded, stats.failed) == (len(bodies) - len(dead), len(dead))


def test_until_empty_waits_for_a_deferred_message_still_delayed(sqs) -> None:
    # GIVEN an empty queue but for a deferred continuation, delayed a few seconds
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="ok-deferred", DelaySeconds=4)

    # WHEN the event source runs until the queue is empty
    stats = _run_until_empty(sqs, url, batch_size=1)

    # THEN it did not stop before the message showed, and handled it
    assert stats.succeeded == 1
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "0"


def test_warm_workers_start_before_the_first_message_and_stay_warm(sqs) -> None:
    # GIVEN an event source of two workers, warmed before any message is queued
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    config = EventSourceConfig(queue_url=url, handler=HANDLER, max_concurrency=2, until_empty=True)
    source = LocalEventSource(sqs, config)
    source.warm()
    warmed = source.stats.cold_starts, [worker.pid for worker in source._all_workers]

    # WHEN messages arrive and the source runs until the queue is empty
    for body in ("ok-1", "ok-2", "ok-3"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    stats = source.run()

    # THEN every worker was running before the first message, and none started again for them
    assert all(pid is not None for pid in warmed[1])
    assert (stats.succeeded, stats.cold_starts, len(stats.init_ms)) == (3, 2, 2)


def test_poll_leaves_the_workers_up_until_closed_and_run_closes_them(sqs) -> None:
    # GIVEN a warmed source and a message
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    config = EventSourceConfig(queue_url=url, handler=HANDLER, max_concurrency=1, until_empty=True)
    source = LocalEventSource(sqs, config)
    source.warm()
    sqs.send_message(QueueUrl=url, MessageBody="ok-1")

    # WHEN polled until the queue is empty, the worker is still up; close() stops it
    assert source.poll().succeeded == 1
    assert [worker.pid for worker in source._all_workers] != [None]
    source.close()
    assert [worker.pid for worker in source._all_workers] == [None]

    # AND run() closes its workers when it returns
    source = LocalEventSource(sqs, config)
    sqs.send_message(QueueUrl=url, MessageBody="ok-2")
    assert source.run().succeeded == 1
    assert [worker.pid for worker in source._all_workers] == [None]


def test_a_poll_beside_a_producer_waits_for_what_it_still_sends(sqs) -> None:
    # GIVEN an empty queue, and a producer that sends its messages one by one only after a moment
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    config = EventSourceConfig(
        queue_url=url, handler=HANDLER, max_concurrency=1, until_empty=True, wait_seconds=0
    )
    source = LocalEventSource(sqs, config)

    def produce() -> None:
        for body in ("ok-1", "ok-2", "ok-3"):
            time.sleep(0.2)
            sqs.send_message(QueueUrl=url, MessageBody=body)

    # WHEN the source polls until the queue is empty while the producer runs beside it
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            sending = pool.submit(produce)
            stats = source.poll(producing=lambda: not sending.done())
            sending.result()
    finally:
        source.close()

    # THEN an empty queue did not end the poll while the producer was sending: every message was handled
    assert stats.succeeded == 3
    assert _bodies(sqs, url) == set()
