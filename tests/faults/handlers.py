"""Consumer handlers with faults injected into the embedding API, for the local event source.

Each runs the real consumer.handler.lambda_handler, with the real collaborators, except that the
embedder is wrapped by one that misbehaves. Every injected fault is counted in Redis, so the
suite can report how many happened across all worker processes.
"""

import dataclasses
import itertools
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import redis

from consumer import handler as consumer_handler
from shared.errors import EmbeddingError, ProviderError, UnavailableError
from shared.ledger import PostgresLedger
from shared.ports import Embedder, RunProgress, Vectors
from shared.settings import get_settings
from tests.fakes import WrappingEmbedder


def fault_counter(name: str) -> str:
    return f"faults:{os.environ['DRUGSYNC_KEY_PREFIX']}{name}"  # outside the document prefix


class FaultyEmbedder(WrappingEmbedder):
    """Wraps the real embedder; `fault(texts)` returns an exception to raise, or None."""

    def __init__(
        self,
        inner: Embedder,
        fault: Callable[[Sequence[str]], Exception | None],
        name: str,
        counted: bool = True,
    ) -> None:
        super().__init__(inner)
        self._fault = fault
        self._counter = fault_counter(name)
        self._texts_counter = fault_counter("texts_embedded")
        self._redis = redis.Redis.from_url(os.environ["REDIS_URL"]) if counted else None

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        error = self._fault(texts)
        if error is not None:
            if self._redis is not None:
                self._redis.incr(self._counter)
            raise error
        vectors = self._inner.embed_texts(texts)
        if self._redis is not None:
            self._redis.incrby(self._texts_counter, len(texts))
        return vectors


def _count_announcements() -> None:
    """Every announcement of a run's end, in any worker, counted in Redis (patched once per process)."""
    announce = consumer_handler.RunAnnouncer.announce
    if getattr(announce, "counted", False):
        return

    def counted(self: consumer_handler.RunAnnouncer, progress: RunProgress) -> None:
        announce(self, progress)
        redis.Redis.from_url(os.environ["REDIS_URL"]).incr(fault_counter("announcements"))

    counted.counted = True  # type: ignore[attr-defined]
    consumer_handler.RunAnnouncer.announce = counted  # type: ignore[method-assign]


def _die_after_the_last_range() -> None:
    """The worker that marks a run's last range done is killed at once, before anything else (once)."""
    mark = PostgresLedger.mark_range_done
    if getattr(mark, "deadly", False):
        return

    def mark_then_die(
        self: PostgresLedger, run_id: UUID, first_id: int, drugs_written: int, drugs_skipped: int = 0
    ) -> bool:
        newly_done = mark(self, run_id, first_id, drugs_written, drugs_skipped)
        progress = self.progress(run_id)
        last = newly_done and progress is not None and progress.ranges_complete
        if last and redis.Redis.from_url(os.environ["REDIS_URL"]).setnx(fault_counter("killed"), 1):
            os.kill(os.getpid(), signal.SIGKILL)
        return newly_done

    mark_then_die.deadly = True  # type: ignore[attr-defined]
    PostgresLedger.mark_range_done = mark_then_die  # type: ignore[method-assign]


def _run_with(
    fault: Callable[[Sequence[str]], Exception | None],
    name: str,
    counted: bool = True,
    before: Callable[[], None] = lambda: None,
) -> Callable[..., Any]:
    consumer: list[consumer_handler.Consumer] = []

    def faulty_consumer() -> consumer_handler.Consumer:
        if not consumer:
            real = consumer_handler.build_consumer(get_settings())
            embedder = FaultyEmbedder(real.embedder, fault, name, counted)
            consumer.append(dataclasses.replace(real, embedder=embedder))
        return consumer[0]

    def lambda_handler(event: dict[str, Any], context: Any) -> Any:
        if counted:
            _count_announcements()
        before()
        consumer_handler._consumer = faulty_consumer  # type: ignore[assignment]
        return consumer_handler.lambda_handler(event, context)

    return lambda_handler


_calls = itertools.count(1)


def _throttle(texts: Sequence[str]) -> Exception | None:
    """A storm: every other call is throttled, and every call in a burst of five out of twenty."""
    call = next(_calls)
    if call % 2 == 0 or call % 20 < 5:
        return UnavailableError("ThrottlingException: Too many requests, please wait before trying again.")
    return None


def _server_error(texts: Sequence[str]) -> Exception | None:
    """One call in three answers 503."""
    if next(_calls) % 3 == 0:
        return UnavailableError("ServiceUnavailableException (503): service temporarily unavailable")
    return None


def _poison(texts: Sequence[str]) -> Exception | None:
    if any("POISON" in text for text in texts):
        return EmbeddingError("ValidationException: Malformed input request: text rejected")
    return None


ACCESS_DENIED_CALLS = 4


def _access_denied(texts: Sequence[str]) -> Exception | None:
    """Bedrock refuses the account (IAM not yet granted) for the first few calls of the whole run."""
    calls = redis.Redis.from_url(os.environ["REDIS_URL"]).incr(fault_counter("embedding_calls"))
    if calls <= ACCESS_DENIED_CALLS:
        return ProviderError("bedrock amazon.titan-embed-text-v2:0: AccessDeniedException: not authorized")
    return None


def _slow(texts: Sequence[str]) -> Exception | None:
    time.sleep(0.01 * len(texts))  # 10 ms a text: a range of 300 needs 3 s
    return None


throttling_handler = _run_with(_throttle, "throttling")
server_error_handler = _run_with(_server_error, "server_errors")
poison_handler = _run_with(_poison, "poison")
slow_handler = _run_with(_slow, "slow")
access_denied_handler = _run_with(_access_denied, "access_denied")
# Slow too, but counting nothing in Redis: for faults injected into Redis, where only the store's
# writes should meet them.
uncounted_slow_handler = _run_with(_slow, "slow", counted=False)
counting_handler = _run_with(lambda texts: None, "none")
dies_after_last_range_handler = _run_with(lambda texts: None, "none", before=_die_after_the_last_range)
