import json
import logging
import uuid
from typing import Any

import boto3
import pytest
from moto import mock_aws

from console import dead_letters
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


def test_split_moves_through_the_mover_even_where_sqs_has_the_move_task(queues) -> None:
    # GIVEN an oversized rows message in the DLQ, on an endpoint whose native move task would work
    sqs, dlq, work = queues
    _dead(sqs, dlq, _oversized_rows(1500), "InvalidMessage", "too big")

    class MoveTask:
        def start_message_move_task(self, **kwargs):
            raise AssertionError("the native task moves messages as they are: it cannot split")

    report = redrive(sqs, dlq, work, rows_per_message=MAX_ROWS_PER_MESSAGE, native_client=MoveTask())

    assert report.method == "receive-send-delete"
    assert all(isinstance(parse_message(body), RowsMessage) for body in _drain(sqs, work))


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


class RealisticSqs:
    """moto's SQS, as real SQS also behaves: empty polls while messages remain, a held message
    delivered again, entries of a batch call failing one by one, and a crash mid-way."""

    def __init__(self, sqs, empty_polls: int = 0, redeliver: str | None = None) -> None:
        self._sqs = sqs
        self.empty_polls = empty_polls
        self.redeliver = redeliver
        self.bad_delete: str | None = None  # a MessageId whose delete SQS refuses
        self.bad_release = False
        self.crash_on_send: int | None = None  # SendMessageBatch call at which the process dies
        self.sends = 0
        self._handles: dict[str, str] = {}
        self._first: dict[str, Any] | None = None

    def __getattr__(self, name):
        return getattr(self._sqs, name)

    def receive_message(self, **kwargs):
        if self.empty_polls:
            self.empty_polls -= 1
            return {}
        response = self._sqs.receive_message(**kwargs)
        messages = response.get("Messages", [])
        self._handles.update({m["ReceiptHandle"]: m["MessageId"] for m in messages})
        if self.redeliver == "expired" and messages:
            # the first message's hold runs out: the next receive brings it again, with a new handle
            self.redeliver = None
            self._sqs.change_message_visibility(
                QueueUrl=kwargs["QueueUrl"], ReceiptHandle=messages[0]["ReceiptHandle"], VisibilityTimeout=0
            )
        if self.redeliver == "twice" and messages:
            # SQS delivers at least once: a later receive brings a message this one already holds
            if self._first is None:
                self._first = messages[0]
            else:
                self.redeliver = None
                response = {**response, "Messages": [*messages, self._first]}
        return response

    def send_message_batch(self, **kwargs):
        self.sends += 1
        if self.sends == self.crash_on_send:
            raise SystemExit("the console was killed")
        return self._sqs.send_message_batch(**kwargs)

    def delete_message_batch(self, QueueUrl, Entries):
        entries = [
            {**e, "ReceiptHandle": "not-a-handle"}
            if self._handles.get(e["ReceiptHandle"]) == self.bad_delete
            else e
            for e in Entries
        ]
        return self._sqs.delete_message_batch(QueueUrl=QueueUrl, Entries=entries)

    def change_message_visibility_batch(self, QueueUrl, Entries):
        if self.bad_release:
            Entries = [{**Entries[0], "ReceiptHandle": "not-a-handle"}, *Entries[1:]]
        return self._sqs.change_message_visibility_batch(QueueUrl=QueueUrl, Entries=Entries)


def _held(sqs, url: str) -> int:
    """Messages in the queue, visible or not."""
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_listing_sees_every_message_once_through_empty_polls_and_redeliveries(queues) -> None:
    # GIVEN 25 dead letters, and SQS answering two polls empty and delivering a held message again
    sqs, dlq, _ = queues
    for i in range(25):
        _dead(sqs, dlq, _rows([i]), "RowError", "bad")
    realistic = RealisticSqs(sqs, empty_polls=2, redeliver="expired")

    # WHEN they are listed
    letters = list_dead_letters(realistic, dlq)

    # THEN each is listed exactly once, and all are visible again afterwards
    assert sorted(letter.body for letter in letters) == sorted(_rows([i]) for i in range(25))
    assert len({letter.message_id for letter in letters}) == 25
    attributes = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "25"


def test_the_mover_moves_each_message_once_through_empty_polls_and_redeliveries(queues) -> None:
    sqs, dlq, work = queues
    for i in range(25):
        _dead(sqs, dlq, _rows([i]), "RowError", "bad")

    report = redrive(RealisticSqs(sqs, empty_polls=2, redeliver="twice"), dlq, work, max_messages=100)

    assert report.moved == 25
    assert sorted(_drain(sqs, work)) == sorted(_rows([i]) for i in range(25))  # no message twice
    assert _held(sqs, dlq) == 0


def test_listing_gives_up_after_a_bounded_number_of_empty_polls(queues, monkeypatch) -> None:
    # GIVEN a queue that reports more messages than any poll brings (they are held elsewhere)
    sqs, dlq, _ = queues
    monkeypatch.setattr(dead_letters, "WAIT_SECONDS", 0)
    _dead(sqs, dlq, _rows([1]), "RowError", "bad")
    realistic = RealisticSqs(sqs, empty_polls=dead_letters.EMPTY_POLLS + 100)

    assert list_dead_letters(realistic, dlq) == []
    assert realistic.empty_polls == 100  # it stopped after EMPTY_POLLS empty polls


def test_a_failed_send_deletes_nothing(queues) -> None:
    # GIVEN dead letters, and a work queue SQS refuses every send to
    sqs, dlq, work = queues
    for i in range(3):
        _dead(sqs, dlq, _rows([i]), "RowError", "bad")
    sqs.delete_queue(QueueUrl=work)

    report = redrive(sqs, dlq, work, max_messages=10)

    assert (report.moved, report.kept) == (0, 3)
    assert _held(sqs, dlq) == 3


def test_a_crash_between_send_and_delete_leaves_a_duplicate_never_a_loss(queues) -> None:
    # GIVEN 25 dead letters, and a console killed on its 12th send: in the second batch of ten
    sqs, dlq, work = queues
    for i in range(25):
        _dead(sqs, dlq, _rows([i]), "RowError", "bad")
    realistic = RealisticSqs(sqs)
    realistic.crash_on_send = 12

    with pytest.raises(SystemExit):
        redrive(realistic, dlq, work, max_messages=100)

    # THEN the first batch moved; the second, half sent, is still whole in the DLQ: one duplicate, no loss
    assert (_held(sqs, work), _held(sqs, dlq)) == (11, 15)


def test_a_refused_delete_is_reported_as_possibly_duplicated_not_as_moved(queues) -> None:
    # GIVEN three dead letters, one of which SQS refuses to delete
    sqs, dlq, work = queues
    for i in range(3):
        _dead(sqs, dlq, _rows([i]), "RowError", "bad")
    realistic = RealisticSqs(sqs)
    realistic.bad_delete = list_dead_letters(sqs, dlq)[0].message_id

    report = redrive(realistic, dlq, work, max_messages=10)

    assert report.moved == 2
    assert report.possibly_duplicated == [realistic.bad_delete]
    assert (_held(sqs, work), _held(sqs, dlq)) == (3, 1)  # in both queues, lost from none


def test_a_listed_message_sqs_will_not_release_is_reported(queues, caplog) -> None:
    sqs, dlq, _ = queues
    _dead(sqs, dlq, _rows([1]), "RowError", "bad")
    realistic = RealisticSqs(sqs)
    realistic.bad_release = True

    with caplog.at_level(logging.WARNING):
        assert len(list_dead_letters(realistic, dlq)) == 1

    assert "1 listed message(s) could not be made visible again" in caplog.text
