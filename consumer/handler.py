"""Consumer Lambda: SQS partial batch responses over consumer.sync.sync_range."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Json

from consumer.sync import sync_range
from shared.describe import describe_error
from shared.embedders import build_embedder
from shared.models import RangeMessage
from shared.ports import Catalog, DocumentStore, Embedder, Ledger
from shared.settings import Settings, get_settings
from shared.wiring import build_catalog, build_ledger, build_store, open_database

logger = Logger(service="drugsync-consumer")


class RangeRecord(SqsRecordModel):
    """An SQS record whose body is a range message."""

    body: Json[RangeMessage]


class ReportingBatchProcessor(BatchProcessor):
    """Logs why each failed record failed, by message id, before SQS retries it."""

    def failure_handler(self, record: Any, exception: Any) -> Any:
        error = exception[1]
        details = {
            "message_id": getattr(record, "message_id", None) or getattr(record, "messageId", None),
            "error_class": type(error).__name__,
            "reason": describe_error(error),
        }
        if isinstance(record, RangeRecord):
            details.update(_range_keys(record.body))
        logger.warning("range message failed", extra=details)
        return super().failure_handler(record, exception)


@dataclass(frozen=True)
class Consumer:
    """The consumer's collaborators, built once per process (one Lambda container)."""

    settings: Settings
    catalog: Catalog
    ledger: Ledger
    store: DocumentStore
    embedder: Embedder


def build_consumer(settings: Settings) -> Consumer:
    conn = open_database(settings)
    embedder = build_embedder(settings)
    store = build_store(settings)
    store.ensure_index(embedder.dimension)
    return Consumer(settings, build_catalog(settings, conn), build_ledger(conn), store, embedder)


@lru_cache(maxsize=1)
def _consumer() -> Consumer:
    return build_consumer(get_settings())


def _range_keys(message: RangeMessage) -> dict[str, Any]:
    return {"run_id": str(message.run_id), "first_id": message.first_id, "last_id": message.last_id}


def record_handler(record: RangeRecord) -> None:
    consumer = _consumer()
    message = record.body
    result = sync_range(
        message,
        catalog=consumer.catalog,
        embedder=consumer.embedder,
        store=consumer.store,
        ledger=consumer.ledger,
        chunk_size=consumer.settings.embed_batch_size,
    )
    logger.info(
        "range synced",
        extra={**_range_keys(message), "drugs": result.drugs_written, "newly_done": result.newly_done},
    )


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    processor = ReportingBatchProcessor(event_type=EventType.SQS, model=RangeRecord)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
