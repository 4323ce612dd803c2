"""Consumer handlers with faults injected into the embedding API, for the local event source.

Each runs the real consumer.handler.lambda_handler, with the real collaborators, except that the
embedder is wrapped by one that misbehaves. Every injected fault is counted in Redis, so the
suite can report how many happened across all worker processes.
"""

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from consumer import handler as consumer_handler
from shared.errors import EmbeddingError, UnavailableError
from shared.ports import Embedder, Vectors
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


def _run_with(
    fault: Callable[[Sequence[str]], Exception | None], name: str, counted: bool = True
) -> Callable[..., Any]:
    consumer: list[consumer_handler.Consumer] = []

    def faulty_consumer() -> consumer_handler.Consumer:
        if not consumer:
            real = consumer_handler.build_consumer(get_settings())
            embedder = FaultyEmbedder(real.embedder, fault, name, counted)
            consumer.append(dataclasses.replace(real, embedder=embedder))
        return consumer[0]

    def lambda_handler(event: dict[str, Any], context: Any) -> Any:
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


def _slow(texts: Sequence[str]) -> Exception | None:
    time.sleep(0.01 * len(texts))  # 10 ms a text: a range of 300 needs 3 s
    return None


throttling_handler = _run_with(_throttle, "throttling")
server_error_handler = _run_with(_server_error, "server_errors")
poison_handler = _run_with(_poison, "poison")
slow_handler = _run_with(_slow, "slow")
# Slow too, but counting nothing in Redis: for faults injected into Redis, where only the store's
# writes should meet them.
uncounted_slow_handler = _run_with(_slow, "slow", counted=False)
counting_handler = _run_with(lambda texts: None, "none")
