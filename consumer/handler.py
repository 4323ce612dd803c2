"""Consumer Lambda: SQS partial batch responses over consumer.sync.sync_message."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from consumer.sync import Outcome, SyncEnv, sync_message
from shared.describe import describe_error
from shared.embedders import build_embedder
from shared.errors import InvalidMessage
from shared.models import RangeMessage, RowsMessage, parse_message
from shared.ports import Catalog, DocumentStore, Embedder, Ledger, WorkQueue
from shared.retry import RetryPolicy
from shared.settings import Settings, get_settings
from shared.wiring import build_catalog, build_ledger, build_queue, build_store, open_database

logger = Logger(service="drugsync-consumer")


@dataclass(frozen=True)
class Consumer:
    """The consumer's collaborators, built once per process (one Lambda container)."""

    settings: Settings
    catalog: Catalog
    ledger: Ledger
    store: DocumentStore
    embedder: Embedder
    work_queue: WorkQueue
    dead_letters: WorkQueue

    def env(self) -> SyncEnv:
        return SyncEnv(
            catalog=self.catalog,
            embedder=self.embedder,
            store=self.store,
            ledger=self.ledger,
            work_queue=self.work_queue,
            dead_letters=self.dead_letters,
            retry=RetryPolicy(budget_seconds=self.settings.retry_budget_seconds),
            chunk_size=self.settings.embed_batch_size,
            margin_seconds=self.settings.handoff_margin_seconds,
            seconds_per_drug=self.settings.seconds_per_drug,
        )


def build_consumer(settings: Settings) -> Consumer:
    db = open_database(settings)
    embedder = build_embedder(settings)
    store = build_store(settings)
    store.ensure_index(embedder.dimension)
    return Consumer(
        settings=settings,
        catalog=build_catalog(settings, db),
        ledger=build_ledger(db),
        store=store,
        embedder=embedder,
        work_queue=build_queue(settings.queue_url, "QUEUE_URL"),
        dead_letters=build_queue(settings.dlq_url, "DLQ_URL"),
    )


@lru_cache(maxsize=1)
def _consumer() -> Consumer:
    return build_consumer(get_settings())


class ContextDeadline:
    """The invocation's remaining time, from Lambda's context."""

    def __init__(self, context: LambdaContext | None) -> None:
        self._context = context

    def remaining_seconds(self) -> float:
        if self._context is None:
            return float("inf")
        return self._context.get_remaining_time_in_millis() / 1000


class ReportingBatchProcessor(BatchProcessor):
    """Logs why each failed record failed, by message id, before SQS retries it."""

    def failure_handler(self, record: Any, exception: Any) -> Any:
        error = exception[1]
        logger.warning(
            "message failed; SQS will retry it",
            extra={
                "message_id": getattr(record, "message_id", None),
                "error_class": type(error).__name__,
                "reason": describe_error(error),
                "retryable": getattr(error, "retryable", False),
            },
        )
        return super().failure_handler(record, exception)


def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None) -> None:
    consumer = _consumer()
    try:
        message = parse_message(record.body)
        outcome = sync_message(message, consumer.env(), ContextDeadline(lambda_context))
    except InvalidMessage as error:
        # Retrying cannot fix a bad message: it goes straight to the DLQ with the reason.
        reason = describe_error(error)
        consumer.dead_letters.send_messages(
            [record.body], {"error_class": "InvalidMessage", "reason": reason}
        )
        logger.warning(
            "message rejected to the DLQ", extra={"message_id": record.message_id, "reason": reason}
        )
        return
    logger.info("message synced", extra={**_message_keys(message), **_outcome_keys(outcome)})


def _message_keys(message: RangeMessage | RowsMessage) -> dict[str, Any]:
    if isinstance(message, RowsMessage):
        return {"run_id": str(message.run_id), "kind": "rows", "ids": len(message.ids)}
    return {
        "run_id": str(message.run_id),
        "kind": "range",
        "range": message.range_key,
        "first_id": message.first_id,
        "last_id": message.last_id,
    }


def _outcome_keys(outcome: Outcome) -> dict[str, Any]:
    return {
        "drugs": outcome.drugs_written,
        "failed_ids": list(outcome.failed_ids),
        "continued_at": outcome.continued_at,
        "deferred": outcome.deferred,
        "range_done": outcome.range_done,
    }


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    processor = ReportingBatchProcessor(event_type=EventType.SQS)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
