"""Producer Lambda: AWS glue over producer.plan.start_sync."""

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from producer.plan import range_size_that_fits, start_sync
from shared.capture import ChangeCapture
from shared.describe import validation_problems
from shared.embedders import embedder_name
from shared.errors import ConfigError
from shared.generations import RedisGenerations
from shared.ledger import PostgresLedger
from shared.models import SyncRequest, SyncSummary
from shared.postgres import PostgresCatalog
from shared.queue import SqsQueue
from shared.redis_store import RedisDocumentStore
from shared.settings import Settings, get_settings
from shared.wiring import (
    build_capture,
    build_catalog,
    build_ledger,
    build_queue,
    build_store,
    open_database,
)

logger = Logger(service="drugsync-producer")


@dataclass(frozen=True)
class Producer:
    """The producer's collaborators, built once per process."""

    settings: Settings
    catalog: PostgresCatalog
    ledger: PostgresLedger
    queue: SqsQueue
    store: RedisDocumentStore
    changes: ChangeCapture

    def start(self, request: SyncRequest) -> SyncSummary:
        return start_sync(
            request,
            catalog=self.catalog,
            ledger=self.ledger,
            queue=self.queue,
            generations=RedisGenerations(self.store),
            embedder_name=embedder_name(self.settings),
            embedding_dim=self.settings.embedding_dim,
            default_range_size=self.settings.range_size,
            max_range_size=range_size_that_fits(
                self.settings.consumer_timeout_seconds,
                self.settings.handoff_margin_seconds,
                self.settings.seconds_per_drug,
            ),
            claim_seconds=self.settings.run_claim_seconds,
            changes=self.changes,
            overlap_seconds=self.settings.watermark_overlap_seconds,
        )


def build_producer(settings: Settings) -> Producer:
    db = open_database(settings)
    return Producer(
        settings=settings,
        catalog=build_catalog(settings, db),
        ledger=build_ledger(db),
        queue=build_queue(settings.queue_url, "QUEUE_URL"),
        store=build_store(settings),
        changes=build_capture(settings, db),
    )


@lru_cache(maxsize=1)
def _producer() -> Producer:
    return build_producer(get_settings())


def parse_request(event: dict[str, Any] | None) -> SyncRequest:
    """The event as a SyncRequest; a wrong field is a ConfigError naming it."""
    try:
        return SyncRequest.model_validate(event or {})
    except ValidationError as error:
        raise ConfigError(f"invalid producer event: {validation_problems(error)}") from error


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any] | None, context: LambdaContext) -> dict[str, Any]:
    request = parse_request(event)
    summary = _producer().start(request)
    logger.info("sync started", extra=summary.model_dump(mode="json"))
    return summary.model_dump(mode="json")
