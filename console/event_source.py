"""`drugsync work`: run the consumer the way Lambda's SQS event source mapping does.

Long-polls the queue, hands batches of up to batch_size records to the handler in Lambda's event
format with at most max_concurrency invocations at once, deletes only the records the handler
reports as succeeded, and leaves the rest to SQS (visibility timeout, receive count, DLQ).
"""

import statistics
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

from console.invoker import CodeSource, InvocationResult, InvocationWorker
from shared.queue import SQS_BATCH_LIMIT, SqsQueue

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

DRAINED_CHECKS = 2  # approximate counts: only believe "empty" when seen twice in a row
IDLE_PAUSE_SECONDS = 0.005  # between short polls of an empty queue while work is still under way


@dataclass(frozen=True)
class EventSourceConfig:
    """The event source mapping's settings, as serverless.yml gives them to Lambda."""

    queue_url: str
    handler: str = "consumer/handler.lambda_handler"  # as serverless.yml names it
    function_name: str = "drugsync-consumer"
    batch_size: int = 1
    max_concurrency: int = 2
    function_timeout: float = 60.0
    wait_seconds: int = 1
    until_empty: bool = False
    log_path: str | None = None
    code: CodeSource = field(default_factory=CodeSource)


@dataclass
class WorkStats:
    """Running totals, updated from invocation threads."""

    invocations: int = 0
    succeeded: int = 0
    failed: int = 0
    timeouts: int = 0
    errors: int = 0
    cold_starts: int = 0
    init_ms: list[float] = field(default_factory=list)  # each cold start's Init Duration
    redeliveries: int = 0
    undeleted: int = 0  # succeeded, but SQS refused the delete: they will be delivered again
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def init_ms_median(self) -> float | None:
        return statistics.median(self.init_ms) if self.init_ms else None

    def record(self, records: int, failures: int, redelivered: int, result: InvocationResult) -> None:
        with self._lock:
            self.invocations += 1
            self.redeliveries += redelivered
            self.succeeded += records - failures
            self.failed += failures
            self.timeouts += result.timed_out
            self.errors += result.error is not None and not result.timed_out


class LocalEventSource:
    """Polls one SQS queue and invokes the handler in warm child processes."""

    def __init__(
        self,
        sqs: "SQSClient",
        config: EventSourceConfig,
        on_invocation: Callable[[WorkStats], None] | None = None,
    ) -> None:
        self._sqs = sqs
        self._config = config
        self._on_invocation = on_invocation
        self._queue_arn = sqs.get_queue_attributes(QueueUrl=config.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self._region = self._queue_arn.split(":")[3]
        self._all_workers = [
            InvocationWorker(config.handler, config.function_name, config.log_path, config.code)
            for _ in range(config.max_concurrency)
        ]
        self._workers: SimpleQueue[InvocationWorker] = SimpleQueue()
        for worker in self._all_workers:
            self._workers.put(worker)
        self._slots = threading.Semaphore(config.max_concurrency)
        self._active = 0
        self._active_lock = threading.Lock()
        self.stats = WorkStats()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def warm(self) -> None:
        """Start every worker and run its init now, all at once, so the first invocations find them warm
        (Lambda's provisioned concurrency); a benchmark keeps the inits out of the time it measures."""
        with ThreadPoolExecutor(max_workers=len(self._all_workers)) as pool:
            for started in [pool.submit(worker.warm) for worker in self._all_workers]:
                started.result()

    def busy_pids(self) -> list[int]:
        """Processes running an invocation right now (what a fault test kills)."""
        return [w.pid for w in self._all_workers if w.busy and w.pid is not None]

    def run(self) -> WorkStats:
        """Poll and invoke until stopped, or until the queue is drained with --until-empty; then
        close the workers."""
        try:
            return self.poll()
        finally:
            self.close()

    def poll(self, producing: Callable[[], bool] = lambda: False) -> WorkStats:
        """run() without closing the workers after: the caller closes them (a benchmark stops its
        clock when the queue is drained, as no Lambda function waits for its containers to stop).

        `producing` says whether a producer started beside the poll is still sending (a mapping polls
        while the producer runs, so the first ranges start before the last are sent): until it says
        no, an empty queue is polled again instead of counting as drained.

        While the queue is empty but a producer or an invocation is still at work (what it sends next
        is polled for), short polls are spaced by a moment rather than sent back to back, which would
        keep the SQS server busy on the cores the last invocations need (no change in a run's end
        was measured, on 2 cores)."""
        empty_checks = 0
        with ThreadPoolExecutor(max_workers=self._config.max_concurrency) as pool:
            try:
                while not self._stop.is_set():
                    self._slots.acquire()
                    messages = self._receive_batch()
                    if messages:
                        empty_checks = 0
                        self._begin()
                        pool.submit(self._invoke_and_settle, messages)
                        continue
                    self._slots.release()
                    if producing() or self._working():  # asked before the queue: what they sent counts
                        empty_checks = 0
                        self._stop.wait(IDLE_PAUSE_SECONDS)
                        continue
                    empty_checks = empty_checks + 1 if self._drained() else 0
                    if self._config.until_empty and empty_checks >= DRAINED_CHECKS:
                        break
            finally:
                self._stop.set()
        return self.stats

    def _begin(self) -> None:
        with self._active_lock:
            self._active += 1

    def _working(self) -> bool:
        with self._active_lock:
            return self._active > 0

    def _drained(self) -> bool:
        if self._working():
            return False
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=self._config.queue_url,
            # Delayed: a deferred range's continuation waits out its DelaySeconds before it shows.
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return all(int(value) == 0 for value in attributes.values())

    def _receive_batch(self) -> list["MessageTypeDef"]:
        """Up to batch_size messages: one long poll, then short polls while messages keep coming."""
        messages: list[MessageTypeDef] = []
        wait = self._config.wait_seconds
        while len(messages) < self._config.batch_size and not self._stop.is_set():
            received = self._sqs.receive_message(
                QueueUrl=self._config.queue_url,
                MaxNumberOfMessages=min(SQS_BATCH_LIMIT, self._config.batch_size - len(messages)),
                WaitTimeSeconds=wait,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not received:
                break
            messages.extend(received)
            wait = 0
        return messages

    def _invoke_and_settle(self, messages: list["MessageTypeDef"]) -> None:
        worker = self._workers.get()
        try:
            event = {"Records": [self._to_record(message) for message in messages]}
            result = worker.invoke(event, self._config.function_timeout)
            failed_ids = self._failed_ids(result, messages)
            self._delete([m for m in messages if m["MessageId"] not in failed_ids])
            redelivered = sum(
                int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")) > 1 for m in messages
            )
            self.stats.record(len(messages), len(failed_ids), redelivered, result)
            self.stats.cold_starts = sum(w.cold_starts for w in self._all_workers)
            self.stats.init_ms = [ms for w in self._all_workers for ms in w.init_ms]
            if self._on_invocation is not None:
                self._on_invocation(self.stats)
        finally:
            self._workers.put(worker)
            with self._active_lock:
                self._active -= 1
            self._slots.release()

    @staticmethod
    def _failed_ids(result: InvocationResult, messages: list["MessageTypeDef"]) -> set[str]:
        """Every record fails when the invocation failed; otherwise those the handler reported."""
        every_id = {message["MessageId"] for message in messages}
        if result.response is None:
            return every_id
        reported = {item.get("itemIdentifier") for item in result.response.get("batchItemFailures", [])}
        # Lambda treats an unknown or empty itemIdentifier as a failure of the whole batch.
        return every_id if not reported <= every_id else {str(item) for item in reported}

    def _delete(self, messages: list["MessageTypeDef"]) -> None:
        """Delete the records that succeeded; one SQS refused to delete comes back (a redelivery)."""
        failed = SqsQueue(self._sqs, self._config.queue_url).delete_messages(
            [m["ReceiptHandle"] for m in messages]
        )
        with self.stats._lock:
            self.stats.undeleted += len(failed)

    def _to_record(self, message: "MessageTypeDef") -> dict[str, Any]:
        """An SQS message in the shape Lambda hands to a function."""
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": dict(message.get("Attributes", {})),
            "messageAttributes": {
                name: {
                    "stringValue": value.get("StringValue"),
                    "binaryValue": value.get("BinaryValue"),
                    "stringListValues": [],
                    "binaryListValues": [],
                    "dataType": value["DataType"],
                }
                for name, value in message.get("MessageAttributes", {}).items()
            },
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self._queue_arn,
            "awsRegion": self._region,
        }

    def close(self) -> None:
        """Stop every worker process."""
        for worker in self._all_workers:
            worker.close()
