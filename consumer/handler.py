"""Consumer Lambda: SQS partial batch responses over consumer.sync.sync_message."""

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from uuid import UUID

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from consumer.sync import Outcome, SyncEnv, sync_message
from shared.describe import describe_error
from shared.embedders import build_embedder
from shared.errors import InvalidMessage, ThrottledError
from shared.generations import RedisGenerations
from shared.models import AnyMessage, ChangesMessage, RetireMessage, RowsMessage, SweepMessage, parse_message
from shared.ports import Catalog, DocumentStore, Embedder, Generations, Ledger, RunProgress, WorkQueue
from shared.postgres import Database
from shared.ratelimit import RedisRequestLimiter
from shared.retry import RetryPolicy
from shared.settings import Settings, get_settings
from shared.telemetry import Notifier
from shared.wiring import build_catalog, build_ledger, build_limiter, build_queue, build_store, open_database

logger = Logger(service="drugsync-consumer")
metrics = Metrics(namespace="drugsync", service="consumer")


class MetricsTelemetry:
    """The core's counts and durations as CloudWatch EMF metrics, flushed when the handler returns."""

    def count(self, name: str, value: float = 1) -> None:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)

    def milliseconds(self, name: str, value: float) -> None:
        metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)


class SnsNotifier:
    """Publishes a run's end to an SNS topic."""

    def __init__(self, topic_arn: str) -> None:
        import boto3

        self._client = boto3.client("sns")
        self._topic_arn = topic_arn

    def notify(self, subject: str, message: str) -> None:
        self._client.publish(TopicArn=self._topic_arn, Subject=subject[:100], Message=message)


class RunAnnouncer:
    """A run's end, said once: a log line, the RunsFinished metric, and an optional SNS message."""

    def __init__(self, notifier: Notifier | None) -> None:
        self._notifier = notifier

    def announce(self, progress: RunProgress) -> None:
        summary = {
            "run_id": str(progress.run_id),
            "state": progress.state,
            "drugs": progress.drugs_done,
            "failed_drugs": progress.open_failures,
            "documents_removed": progress.documents_removed,
            "drugs_skipped": progress.drugs_skipped,
            "mode": progress.mode,
        }
        if self._notifier is not None:
            self._notifier.notify(f"drugsync run {progress.state}", json.dumps(summary))
        metrics.add_metric(name="RunsFinished", unit=MetricUnit.Count, value=1)
        logger.info("run finished", extra=summary)


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
    notifier: Notifier | None = None
    database: Database | None = None
    generations: Generations | None = None
    run_stores: dict[UUID, DocumentStore] = field(default_factory=dict)
    limiter: RedisRequestLimiter | None = None

    def bind_deadline(self, deadline: "ContextDeadline") -> None:
        """Let quota waits take at most what this invocation can spare; a longer one hands the range on."""
        if self.limiter is not None:
            margin = self.settings.handoff_margin_seconds
            self.limiter.wait_budget = lambda: deadline.remaining_seconds() - margin

    def close(self) -> None:
        """Close the database connection (a Lambda container never needs to; a test measuring does)."""
        if self.database is not None:
            self.database.close()

    def env(self) -> SyncEnv:
        telemetry = MetricsTelemetry()
        return SyncEnv(
            catalog=self.catalog,
            embedder=self.embedder,
            store=self.store,
            ledger=self.ledger,
            work_queue=self.work_queue,
            dead_letters=self.dead_letters,
            retry=RetryPolicy(
                budget_seconds=self.settings.retry_budget_seconds,
                on_retry=lambda error: telemetry.count(
                    "Throttles" if isinstance(error, ThrottledError) else "TransientRetries"
                ),
            ),
            chunk_size=self.settings.embed_batch_size,
            margin_seconds=self.settings.handoff_margin_seconds,
            seconds_per_drug=self.settings.seconds_per_drug,
            telemetry=telemetry,
            announcer=RunAnnouncer(self.notifier),
            claim_seconds=2 * self.settings.consumer_timeout_seconds,
            generations=self.generations,
            run_stores=self.run_stores,
            probe_chunk_size=self._probe_chunk_size(),
        )

    def _probe_chunk_size(self) -> int | None:
        """One request per concurrent slot of an API embedder under a quota; None otherwise."""
        per_request: int | None = getattr(self.embedder, "texts_per_request", None)
        if self.limiter is None or per_request is None:
            return None
        return self.settings.bedrock_concurrency * per_request


def build_consumer(settings: Settings) -> Consumer:
    db = open_database(settings)
    embedder = build_embedder(settings)
    store = build_store(settings)
    limiter = embedder.limiter = build_limiter(settings, embedder, store.client)
    if limiter is None and (settings.embedding_quota_rpm or settings.embedding_quota_tpm):
        logger.info(f"embedding quota ignored: {embedder.name} is a local embedder, it sends no API requests")
    # Each run's generation has its index from the producer; the consumer checks durability only.
    warning = store.check_durability()
    if warning:
        logger.warning(warning)
    ledger = build_ledger(db)
    ledger.ensure_schema()  # messages of runs in flight during an upgrade meet the columns they need
    return Consumer(
        settings=settings,
        catalog=build_catalog(settings, db),
        ledger=ledger,
        store=store,
        embedder=embedder,
        work_queue=build_queue(settings.queue_url, "QUEUE_URL"),
        dead_letters=build_queue(settings.dlq_url, "DLQ_URL"),
        notifier=SnsNotifier(settings.completion_topic_arn) if settings.completion_topic_arn else None,
        database=db,
        generations=RedisGenerations(store),
        limiter=limiter,
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
    logger.remove_keys(["run_id", "kind", "range", "first_id", "last_id", "ids", "cursor"])
    try:
        message = parse_message(record.body)
        logger.append_keys(**_message_keys(message))  # every line about this message names its run
        deadline = ContextDeadline(lambda_context)
        consumer.bind_deadline(deadline)
        outcome = sync_message(message, consumer.env(), deadline)
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
    if outcome.dropped:
        logger.info("message dropped: its run was superseded", extra={"message_id": record.message_id})
        return
    logger.info("message synced", extra=_outcome_keys(outcome))


def _message_keys(message: AnyMessage) -> dict[str, Any]:
    if isinstance(message, RowsMessage):
        return {"run_id": str(message.run_id), "kind": "rows", "ids": len(message.ids)}
    if isinstance(message, SweepMessage):
        return {"run_id": str(message.run_id), "kind": "sweep", "cursor": message.cursor}
    if isinstance(message, ChangesMessage):
        keys = {"kind": "changes", "range": message.range_key, "ids": len(message.ids)}
        return {"run_id": str(message.run_id), **keys}
    if isinstance(message, RetireMessage):
        return {"run_id": str(message.run_id), "kind": "retire", "cursor": message.cursor}
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
        "drugs_skipped": outcome.drugs_skipped,
        "failed_ids": list(outcome.failed_ids),
        "continued_at": outcome.continued_at,
        "deferred": outcome.deferred,
        "range_done": outcome.range_done,
        "documents_removed": outcome.documents_removed,
    }


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    metrics.add_metric(name="Messages", unit=MetricUnit.Count, value=len(event.get("Records", [])))
    processor = ReportingBatchProcessor(event_type=EventType.SQS)
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
