import json
import uuid

import boto3
import pytest
from moto import mock_aws

from console.dead_letters import group_by_cause, list_dead_letters, redrive, split_body
from shared.models import MAX_BODY_BYTES, MAX_ROWS_PER_MESSAGE, RowsMessage, parse_message

RUN = uuid.uuid4()


@pytest.fixture
def queues():
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        work = sqs.create_queue(QueueName="work")["QueueUrl"]
        yield sqs, dlq, work


def _dead(sqs, dlq: str, body: str, error_class: str | None = None, reason: str | None = None) -> None:
    attributes = {}
    if error_class:
        attributes = {
            "error_class": {"DataType": "String", "StringValue": error_class},
            "reason": {"DataType": "String", "StringValue": reason or "-"},
        }
    sqs.send_message(QueueUrl=dlq, MessageBody=body, MessageAttributes=attributes)


def _rows(ids: list[int]) -> str:
    return RowsMessage(run_id=RUN, ids=ids, error_class="RowError", error="x").model_dump_json()


def test_listing_groups_by_cause_and_leaves_every_message_in_place(queues) -> None:
    sqs, dlq, _ = queues
    _dead(sqs, dlq, _rows([3]), "RowError", "drug id 3: ndc: String should have at least 1 character")
    _dead(sqs, dlq, _rows([9]), "RowError", "drug id 9: ndc: String should have at least 1 character")
    _dead(sqs, dlq, "{oops", "InvalidMessage", "body: Invalid JSON")
    range_body = json.dumps({"run_id": str(RUN), "first_id": 1, "last_id": 50, "expected_count": 40})
    _dead(sqs, dlq, range_body)

    groups = group_by_cause(list_dead_letters(sqs, dlq))

    assert groups[0]["error_class"] == "RowError"
    assert groups[0]["reason"] == "ndc: String should have at least 1 character"
    assert sorted(groups[0]["ids"]) == ["3", "9"]
    causes = {(g["error_class"], tuple(g["ids"])) for g in groups[1:]}
    assert causes == {("InvalidMessage", ("-",)), ("MaxReceiveCountExceeded", ("1..50",))}
    assert len(list_dead_letters(sqs, dlq)) == 4  # listing consumed nothing


def test_rows_messages_split_when_asked() -> None:
    parts = [RowsMessage.model_validate_json(b).ids for b in split_body(_rows(list(range(10))), 4)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert split_body("{oops", 4) == ["{oops"]


def _oversized_rows(count: int) -> str:
    """A rows message as an old consumer wrote it: every id of one cause, far over both limits."""
    ids = [-(2**63) + 3 * i for i in range(count)]
    return json.dumps(
        {
            "version": 1,
            "kind": "rows",
            "run_id": str(RUN),
            "ids": ids,
            "error_class": "RowError",
            "error": "bad",
        }
    )


@pytest.mark.parametrize("count", [2500, 900], ids=["over-both-limits", "over-bytes-only"])
def test_a_rows_message_too_big_to_be_valid_is_split_into_valid_ones(count: int) -> None:
    body = _oversized_rows(count)
    assert len(body.encode()) > MAX_BODY_BYTES

    parts = [parse_message(part) for part in split_body(body, MAX_ROWS_PER_MESSAGE)]

    assert all(
        isinstance(p, RowsMessage) and (p.run_id, p.error_class, p.error) == (RUN, "RowError", "bad")
        for p in parts
    )
    assert [i for p in parts if isinstance(p, RowsMessage) for i in p.ids] == json.loads(body)["ids"]


@pytest.mark.parametrize(
    "body",
    [
        '{"kind": "rows", "run_id": "nope", "ids": [1]}',
        json.dumps({"kind": "rows", "run_id": str(RUN), "ids": [1, True]}),
        json.dumps({"kind": "rows", "run_id": str(RUN), "ids": []}),
        json.dumps({"kind": "range", "run_id": str(RUN), "ids": [1, 2]}),
        "[1, 2]",
    ],
)
def test_what_is_not_a_rows_message_travels_as_it_is(body: str) -> None:
    assert split_body(body, 1) == [body]


def test_redrive_split_brings_back_an_oversized_rows_message_as_valid_ones(queues) -> None:
    # GIVEN a rows message the consumer refuses (too many ids, too many bytes) in the DLQ
    sqs, dlq, work = queues
    body = _oversized_rows(2500)
    _dead(sqs, dlq, body, "InvalidMessage", "message body of 52,000 bytes exceeds 16,384")
    assert list_dead_letters(sqs, dlq)[0].ids.startswith(str(-(2**63)))

    # WHEN it is redriven with --split 400
    report = redrive(sqs, dlq, work, rows_per_message=400)

    # THEN the work queue holds valid messages of at most 400 ids naming every id once; the DLQ is empty
    assert (report.moved, report.sent) == (1, 7)
    messages = [parse_message(b) for b in _drain(sqs, work)]
    assert all(isinstance(m, RowsMessage) and len(m.ids) <= 400 for m in messages)
    assert sorted(i for m in messages if isinstance(m, RowsMessage) for i in m.ids) == sorted(
        json.loads(body)["ids"]
    )
    assert list_dead_letters(sqs, dlq) == []


def _drain(sqs, url: str) -> list[str]:
    bodies: list[str] = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        bodies += [m["Body"] for m in batch]
    return bodies


def test_the_mover_moves_every_message_and_only_then_deletes(queues) -> None:
    sqs, dlq, work = queues
    for i in range(23):
        _dead(sqs, dlq, _rows([i]), "RowError", f"drug id {i}: bad")

    report = redrive(sqs, dlq, work, max_messages=30)

    assert report.method == "receive-send-delete"
    assert report.moved == 23
    assert list_dead_letters(sqs, dlq) == []
    moved = set()
    while batch := sqs.receive_message(QueueUrl=work, MaxNumberOfMessages=10).get("Messages", []):
        moved |= {m["Body"] for m in batch}
    assert moved == {_rows([i]) for i in range(23)}


def test_dry_run_moves_nothing(queues) -> None:
    sqs, dlq, work = queues
    _dead(sqs, dlq, _rows([1]), "RowError", "bad")
    report = redrive(sqs, dlq, work, dry_run=True)
    assert (report.moved, report.dry_run) == (1, True)
    assert len(list_dead_letters(sqs, dlq)) == 1


def test_where_sqs_has_the_native_move_task_it_is_used() -> None:
    from botocore.stub import Stubber

    client = boto3.client("sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    dlq = "https://sqs.us-east-1.amazonaws.com/123456789012/dlq"
    work = "https://sqs.us-east-1.amazonaws.com/123456789012/work"
    with Stubber(client) as stubber:
        for name in ("dlq", "work"):
            stubber.add_response(
                "get_queue_attributes",
                {"Attributes": {"QueueArn": f"arn:aws:sqs:us-east-1:123456789012:{name}"}},
            )
        stubber.add_response(
            "start_message_move_task",
            {"TaskHandle": "task-1"},
            {
                "SourceArn": "arn:aws:sqs:us-east-1:123456789012:dlq",
                "DestinationArn": "arn:aws:sqs:us-east-1:123456789012:work",
            },
        )
        report = redrive(client, dlq, work, native_client=client)
        stubber.assert_no_pending_responses()
    assert (report.method, report.task_handle) == ("StartMessageMoveTask", "task-1")


def test_without_the_native_api_the_mover_takes_over(queues) -> None:
    from botocore.exceptions import ClientError

    sqs, dlq, work = queues
    _dead(sqs, dlq, _rows([5]), "RowError", "bad")

    class NoMoveTask:
        def start_message_move_task(self, **kwargs):
            raise ClientError({"Error": {"Code": "InternalFailure", "Message": "not implemented"}}, "Start")

    report = redrive(sqs, dlq, work, native_client=NoMoveTask())

    assert report.method == "receive-send-delete"
    assert report.moved == 1
    assert "InternalFailure" in (report.native_unavailable or "")
