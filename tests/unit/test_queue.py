import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from shared.errors import UnavailableError
from shared.queue import SqsQueue


@pytest.fixture
def sqs():
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def test_a_queue_given_a_factory_makes_its_client_at_the_first_call_and_only_once(sqs) -> None:
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    made: list[object] = []

    def make_client():
        made.append(sqs)
        return sqs

    queue = SqsQueue(make_client, url)
    assert made == []  # a consumer that never sends builds no client

    queue.send_messages(["first"])
    queue.send_messages(["second"])

    assert len(made) == 1
    assert queue.depth().visible == 2


def test_sends_every_body_in_batches_of_ten_and_reports_depth(sqs) -> None:
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    queue = SqsQueue(sqs, url)

    sent = queue.send_messages([f"body-{i}" for i in range(25)])

    assert sent == 25
    assert queue.depth().visible == 25
    received: set[str] = set()
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        received |= {m["Body"] for m in batch}
    assert received == {f"body-{i}" for i in range(25)}
    assert queue.depth().in_flight == 25


def test_entries_sqs_reports_failed_are_resent() -> None:
    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/work"
    with Stubber(client) as stubber:
        stubber.add_response(
            "send_message_batch",
            {
                "Successful": [{"Id": "0", "MessageId": "a", "MD5OfMessageBody": "x"}],
                "Failed": [{"Id": "1", "SenderFault": False, "Code": "InternalError"}],
            },
        )
        stubber.add_response(
            "send_message_batch",
            {"Successful": [{"Id": "1", "MessageId": "b", "MD5OfMessageBody": "x"}], "Failed": []},
            {"QueueUrl": url, "Entries": [{"Id": "1", "MessageBody": "second"}]},
        )
        assert SqsQueue(client, url).send_messages(["first", "second"]) == 2
        stubber.assert_no_pending_responses()


def test_entries_that_keep_failing_raise_with_the_reason() -> None:
    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/work"
    failed = {"Successful": [], "Failed": [{"Id": "0", "SenderFault": False, "Code": "InternalError"}]}
    with Stubber(client) as stubber:
        for _ in range(3):
            stubber.add_response("send_message_batch", failed)
        with pytest.raises(UnavailableError, match="InternalError"):
            SqsQueue(client, url).send_messages(["only"])
