"""SQS adapter: batched sends with per-entry failure handling, and queue depths."""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import UnavailableError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

SQS_BATCH_LIMIT = 10  # ReceiveMessage, SendMessageBatch and DeleteMessageBatch take at most 10
SEND_ATTEMPTS = 3
MAX_ATTRIBUTE_CHARS = 1000


@dataclass(frozen=True)
class QueueDepth:
    """ApproximateNumberOfMessages, ...NotVisible and ...Delayed: waiting, being processed, held back."""

    visible: int
    in_flight: int
    delayed: int = 0

    @property
    def empty(self) -> bool:
        return self.visible == self.in_flight == self.delayed == 0


class SqsQueue:
    """One SQS queue, addressed by URL."""

    def __init__(self, client: "SQSClient | Callable[[], SQSClient]", queue_url: str) -> None:
        """`client`, or a function that makes one at the first call: a consumer syncing a range sends
        nothing, and a boto3 client costs a cold invocation ~30 ms of CPU on the cores Redis shares."""
        self._client_or_factory = client
        self.queue_url = queue_url

    @property
    def _client(self) -> "SQSClient":
        if callable(self._client_or_factory):
            self._client_or_factory = self._client_or_factory()
        return self._client_or_factory

    def send_messages(
        self, bodies: Sequence[str], attributes: Mapping[str, str] | None = None, delay_seconds: int = 0
    ) -> int:
        """Send every body with SendMessageBatch, resending entries SQS reports as failed.

        `attributes` become String message attributes (a DLQ entry's error class and reason);
        `delay_seconds` (0-900) postpones delivery, as a backoff between deferrals.
        """
        for start in range(0, len(bodies), SQS_BATCH_LIMIT):
            entries = [
                self._entry(str(start + index), body, attributes, delay_seconds)
                for index, body in enumerate(bodies[start : start + SQS_BATCH_LIMIT])
            ]
            self._send_batch(entries)
        return len(bodies)

    @staticmethod
    def _entry(
        entry_id: str, body: str, attributes: Mapping[str, str] | None, delay_seconds: int
    ) -> "SendMessageBatchRequestEntryTypeDef":
        entry: SendMessageBatchRequestEntryTypeDef = {"Id": entry_id, "MessageBody": body}
        if delay_seconds:
            entry["DelaySeconds"] = max(0, min(900, delay_seconds))
        if attributes:
            entry["MessageAttributes"] = {
                name: {"DataType": "String", "StringValue": value[:MAX_ATTRIBUTE_CHARS] or "-"}
                for name, value in attributes.items()
            }
        return entry

    def _send_batch(self, pending: "list[SendMessageBatchRequestEntryTypeDef]") -> None:
        for _ in range(SEND_ATTEMPTS):
            try:
                response = self._client.send_message_batch(QueueUrl=self.queue_url, Entries=pending)
            except (ClientError, BotoCoreError) as error:
                raise UnavailableError(f"SQS SendMessageBatch to {self.queue_url}: {error}") from error
            failed_ids = {failure["Id"] for failure in response.get("Failed", [])}
            pending = [entry for entry in pending if entry["Id"] in failed_ids]
            if not pending:
                return
        failures = response.get("Failed", [])
        raise UnavailableError(
            f"SQS rejected {len(pending)} messages after {SEND_ATTEMPTS} attempts: "
            + "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in failures)
        )

    def delete_messages(self, receipt_handles: Sequence[str]) -> list[str]:
        """DeleteMessageBatch, ten at a time; returns the handles SQS reported it did not delete."""
        failed: list[str] = []
        for start in range(0, len(receipt_handles), SQS_BATCH_LIMIT):
            chunk = receipt_handles[start : start + SQS_BATCH_LIMIT]
            entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
                {"Id": str(index), "ReceiptHandle": handle} for index, handle in enumerate(chunk)
            ]
            try:
                response = self._client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as error:
                raise UnavailableError(f"SQS DeleteMessageBatch on {self.queue_url}: {error}") from error
            # A batch call succeeds as a whole while entries fail one by one (e.g. ReceiptHandleIsInvalid).
            failed += [chunk[int(failure["Id"])] for failure in response.get("Failed", [])]
        return failed

    def change_visibility(self, receipt_handles: Sequence[str], seconds: int) -> list[str]:
        """ChangeMessageVisibilityBatch, ten at a time; returns the handles SQS reported as failed."""
        failed: list[str] = []
        for start in range(0, len(receipt_handles), SQS_BATCH_LIMIT):
            chunk = receipt_handles[start : start + SQS_BATCH_LIMIT]
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
                for index, handle in enumerate(chunk)
            ]
            try:
                response = self._client.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
            except (ClientError, BotoCoreError) as error:
                raise UnavailableError(
                    f"SQS ChangeMessageVisibilityBatch on {self.queue_url}: {error}"
                ) from error
            failed += [chunk[int(failure["Id"])] for failure in response.get("Failed", [])]
        return failed

    def depth(self) -> QueueDepth:
        try:
            attributes = self._client.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )["Attributes"]
        except (ClientError, BotoCoreError) as error:
            raise UnavailableError(f"SQS GetQueueAttributes on {self.queue_url}: {error}") from error
        return QueueDepth(
            visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
            delayed=int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
        )
