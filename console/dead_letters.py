"""`drugsync dlq` and `drugsync redrive`: what sits in the dead-letter queue, and moving it back."""

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from uuid import UUID

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import InvalidMessage, UnavailableError
from shared.models import (
    MAX_ROWS_PER_MESSAGE,
    ChangesMessage,
    RetireMessage,
    RowsMessage,
    SweepMessage,
    pack_rows_messages,
    parse_message,
)
from shared.queue import SQS_BATCH_LIMIT, SqsQueue

HOLD_SECONDS = 60  # messages being listed or moved stay hidden from others this long
WAIT_SECONDS = 2  # each receive long-polls this long
EMPTY_POLLS = 3  # long polls in a row that bring nothing new before giving up on the rest
_log = logging.getLogger(__name__)
_DRUG_ID_PREFIX = re.compile(r"^drug id \d+: ")


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message and why it is there."""

    message_id: str
    receipt_handle: str
    body: str
    error_class: str
    reason: str
    receive_count: int
    age_seconds: float

    @property
    def ids(self) -> str:
        """The drugs it names: a range, a list of ids, or '-' for an unreadable message."""
        try:
            message = parse_message(self.body)
        except InvalidMessage:
            fields = _rows_fields(self.body)  # a rows message too big to be valid still names its ids
            return "-" if fields is None else ",".join(str(i) for i in fields["ids"])
        if isinstance(message, RowsMessage):
            return ",".join(str(i) for i in message.ids)
        if isinstance(message, SweepMessage):
            return f"sweep from cursor {message.cursor}"
        if isinstance(message, ChangesMessage):
            return ",".join(str(i) for i in message.ids)
        if isinstance(message, RetireMessage):
            return f"retire generation {message.generation} from cursor {message.cursor}"
        return f"{message.first_id}..{message.last_id}"

    @property
    def cause(self) -> tuple[str, str]:
        return self.error_class, _DRUG_ID_PREFIX.sub("", self.reason)


def _dead_letter(message: dict[str, Any], now_ms: int) -> DeadLetter:
    attributes = message.get("MessageAttributes", {})
    system = message.get("Attributes", {})
    return DeadLetter(
        message_id=message["MessageId"],
        receipt_handle=message["ReceiptHandle"],
        body=message["Body"],
        # Messages SQS moved itself carry no reason: they failed maxReceiveCount times.
        error_class=attributes.get("error_class", {}).get("StringValue", "MaxReceiveCountExceeded"),
        reason=attributes.get("reason", {}).get("StringValue", "failed every receive allowed by the queue"),
        receive_count=int(system.get("ApproximateReceiveCount", 0)),
        age_seconds=round((now_ms - int(system.get("SentTimestamp", now_ms))) / 1000, 1),
    )


@dataclass(frozen=True)
class Received:
    """One receive: messages not seen before, and messages already held received again."""

    fresh: list[dict[str, Any]]
    repeats: list[dict[str, Any]]


def _receive(sqs: Any, queue_url: str, limit: int | None = None) -> Iterator[Received]:
    """Batches of messages, each hidden for HOLD_SECONDS, until the queue's messages are all seen.

    "All" is what ApproximateNumberOfMessages reported at the start (or `limit`). Polls are long:
    a short poll asks only some of SQS's servers and comes back empty while messages remain
    (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-short-and-long-polling.html).
    A message received again (its hold ran out, or SQS delivered it twice) comes as a repeat, with
    its newest receipt handle, never as a new message; EMPTY_POLLS polls with nothing new end it.
    """
    wanted_total = _visible_messages(sqs, queue_url)
    if limit is not None:
        wanted_total = min(wanted_total, limit)
    seen: set[str] = set()
    empty_polls = 0
    while len(seen) < wanted_total and empty_polls < EMPTY_POLLS:
        batch = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=min(SQS_BATCH_LIMIT, wanted_total - len(seen)),
            VisibilityTimeout=HOLD_SECONDS, WaitTimeSeconds=WAIT_SECONDS,
            AttributeNames=["All"], MessageAttributeNames=["All"],
        ).get("Messages", [])  # fmt: skip
        received = Received(
            fresh=[m for m in batch if m["MessageId"] not in seen],
            repeats=[m for m in batch if m["MessageId"] in seen],
        )
        seen.update(m["MessageId"] for m in received.fresh)
        empty_polls = 0 if received.fresh else empty_polls + 1
        yield received


def _visible_messages(sqs: Any, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"].get("ApproximateNumberOfMessages", 0))


def list_dead_letters(sqs: Any, dlq_url: str) -> list[DeadLetter]:
    """Every message in the DLQ, read without consuming it."""
    now_ms = int(time.time() * 1000)
    letters: dict[str, DeadLetter] = {}
    for received in _receive(sqs, dlq_url):
        for message in [*received.fresh, *received.repeats]:
            letter = _dead_letter(message, now_ms)
            # The newest receipt handle is the one SQS honours for a message received twice.
            first = letters.get(letter.message_id, letter)
            letters[letter.message_id] = replace(first, receipt_handle=letter.receipt_handle)
    unreleased = SqsQueue(sqs, dlq_url).change_visibility([x.receipt_handle for x in letters.values()], 0)
    if unreleased:
        _log.warning(
            "%d listed message(s) could not be made visible again; they reappear within %ds",
            len(unreleased), HOLD_SECONDS,
        )  # fmt: skip
    return list(letters.values())


def dead_lettered_ids(letters: list[DeadLetter]) -> set[int]:
    """The drugs named by the rows messages in the DLQ: failing now, waiting for a fix and a redrive."""
    ids: set[int] = set()
    for letter in letters:
        try:
            message = parse_message(letter.body)
        except InvalidMessage:
            continue
        if isinstance(message, RowsMessage):
            ids.update(message.ids)
    return ids


def group_by_cause(letters: list[DeadLetter]) -> list[dict[str, Any]]:
    """One entry per (error class, reason), with the drugs and messages behind it."""
    groups: dict[tuple[str, str], list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault(letter.cause, []).append(letter)
    return [
        {
            "error_class": error_class,
            "reason": reason,
            "messages": len(members),
            "ids": [letter.ids for letter in members],
            "receive_count": max(letter.receive_count for letter in members),
            "oldest_seconds": max(letter.age_seconds for letter in members),
        }
        for (error_class, reason), members in sorted(groups.items(), key=lambda item: -len(item[1]))
    ]


def render_groups(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "the dead-letter queue is empty"
    lines = []
    for group in groups:
        lines.append(
            f"{group['messages']} message(s)  {group['error_class']}: {group['reason']}"
            f"  (receives {group['receive_count']}, oldest {group['oldest_seconds']:.0f}s)"
        )
        lines.append(f"    ids: {'; '.join(group['ids'])}")
    return "\n".join(lines)


@dataclass
class RedriveReport:
    """What a redrive did (or, with --dry-run, would do)."""

    method: str
    moved: int = 0
    sent: int = 0
    dry_run: bool = False
    task_handle: str | None = None
    native_unavailable: str | None = None
    ids: list[str] = field(default_factory=list)
    kept: int = 0  # their send failed: still in the DLQ
    possibly_duplicated: list[str] = field(default_factory=list)  # sent, but SQS refused the delete

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def split_body(body: str, rows_per_message: int) -> list[str]:
    """A rows message becomes as many valid ones as its ids need; anything else travels as it is.

    A rows message too big to pass validation (more ids or bytes than a message may hold) is read
    leniently, so that splitting is what brings it back instead of the DLQ again.
    """
    fields = _rows_fields(body)
    if fields is None:
        return [body]
    try:
        if len(fields["ids"]) <= rows_per_message and parse_message(body):
            return [body]
    except InvalidMessage:
        pass
    return pack_rows_messages(
        fields["run_id"], fields["ids"], _text_or_none(fields, "error_class"), _text_or_none(fields, "error"),
        max_rows=rows_per_message,
    )  # fmt: skip


def _rows_fields(body: str) -> dict[str, Any] | None:
    """A rows message's fields, without its limits: kind "rows", a run id, and a list of int ids."""
    try:
        fields = json.loads(body)
        fields["run_id"] = UUID(str(fields["run_id"]))
    except (ValueError, TypeError, KeyError):
        return None
    ids = fields.get("ids")
    if fields.get("kind") != "rows" or not isinstance(ids, list) or not ids:
        return None
    if not all(type(i) is int for i in ids):  # bool is an int subclass; JSON true is no id
        return None
    return dict(fields)


def _text_or_none(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    return value if isinstance(value, str) else None


def redrive(
    sqs: Any,
    dlq_url: str,
    work_url: str,
    dry_run: bool = False,
    max_messages: int | None = None,
    rows_per_message: int | None = None,
    native_client: Any = None,
) -> RedriveReport:
    """Move dead letters back: SQS's own move task where it exists, else a mover that loses nothing.

    With `rows_per_message` (`--split`) or `max_messages` the mover is used, since the native task
    moves messages as they are: only the mover splits a rows message, too big ones included.

    `native_client` makes the StartMessageMoveTask call (default: a client of the same endpoint
    that does not retry, so an endpoint without the API is given up on at once).
    """
    if dry_run:
        letters = list_dead_letters(sqs, dlq_url)[:max_messages]
        return RedriveReport("dry-run", moved=len(letters), dry_run=True, ids=[x.ids for x in letters])
    native_unavailable = None
    if max_messages is None and rows_per_message is None:
        try:
            return _native_move(sqs, native_client or _client_without_retries(sqs), dlq_url, work_url)
        except (ClientError, BotoCoreError) as error:
            native_unavailable = str(error)
    report = _move(sqs, dlq_url, work_url, max_messages, rows_per_message or MAX_ROWS_PER_MESSAGE)
    report.native_unavailable = native_unavailable
    return report


def _native_move(sqs: Any, native: Any, dlq_url: str, work_url: str) -> RedriveReport:
    """StartMessageMoveTask (AWS): asynchronous, keeps attributes, moves everything in the DLQ."""
    arns = [_queue_arn(sqs, url) for url in (dlq_url, work_url)]
    response = native.start_message_move_task(SourceArn=arns[0], DestinationArn=arns[1])
    return RedriveReport("StartMessageMoveTask", task_handle=response.get("TaskHandle"))


def _client_without_retries(sqs: Any) -> Any:
    return boto3.client(
        "sqs",
        region_name=sqs.meta.region_name,
        endpoint_url=sqs.meta.endpoint_url,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def _queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def _move(
    sqs: Any, dlq_url: str, work_url: str, max_messages: int | None, rows_per_message: int
) -> RedriveReport:
    """Receive, send to the work queue, and delete from the DLQ only what was sent.

    A crash between send and delete leaves a message in both queues: a duplicate, which the
    consumer absorbs (idempotent writes, ranges counted once). Nothing can be lost.
    """
    report = RedriveReport("receive-send-delete")
    work, dead = SqsQueue(sqs, work_url), SqsQueue(sqs, dlq_url)
    now_ms = int(time.time() * 1000)
    sent_ids: set[str] = set()
    for received in _receive(sqs, dlq_url, max_messages):
        sent: dict[str, DeadLetter] = {}
        for letter in (_dead_letter(message, now_ms) for message in received.fresh):
            bodies = split_body(letter.body, rows_per_message)
            try:
                work.send_messages(bodies)
            except UnavailableError:
                report.kept += 1  # not deleted: it stays in the DLQ for the next redrive
                continue
            sent[letter.receipt_handle] = letter
            report.sent += len(bodies)
        # A message sent already and received again is deleted again (newest handle), not resent.
        again = [m["ReceiptHandle"] for m in received.repeats if m["MessageId"] in sent_ids]
        sent_ids.update(letter.message_id for letter in sent.values())
        undeleted = set(dead.delete_messages([*sent, *again]))
        for handle, letter in sent.items():
            if handle in undeleted:
                report.possibly_duplicated.append(letter.message_id)  # in both queues; lost from none
            else:
                report.moved += 1
                report.ids.append(letter.ids)
    return report
