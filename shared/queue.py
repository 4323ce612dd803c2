"""SQS adapter: batched sends with per-entry failure handling, and queue depths."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import UnavailableError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

SQS_BATCH_LIMIT = 10  # SendMessageBatch takes at most 10 entries
SEND_ATTEMPTS = 3


@dataclass(frozen=True)
class QueueDepth:
    """ApproximateNumberOfMessages and ...NotVisible: waiting and being processed."""

    visible: int
    in_flight: int


class SqsQueue:
    """One SQS queue, addressed by URL."""

    def __init__(self, client: "SQSClient", queue_url: str) -> None:
        self._client = client
        self.queue_url = queue_url

    def send_messages(self, bodies: Sequence[str]) -> int:
        """Send every body with SendMessageBatch, resending entries SQS reports as failed."""
        for start in range(0, len(bodies), SQS_BATCH_LIMIT):
            self._send_batch(bodies[start : start + SQS_BATCH_LIMIT], start)
        return len(bodies)

    def _send_batch(self, bodies: Sequence[str], offset: int) -> None:
        pending: list[SendMessageBatchRequestEntryTypeDef] = [
            {"Id": str(offset + index), "MessageBody": body} for index, body in enumerate(bodies)
        ]
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

    def depth(self) -> QueueDepth:
        try:
            attributes = self._client.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
        except (ClientError, BotoCoreError) as error:
            raise UnavailableError(f"SQS GetQueueAttributes on {self.queue_url}: {error}") from error
        return QueueDepth(
            visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )
