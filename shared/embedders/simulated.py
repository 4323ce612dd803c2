"""A stand-in for a remote embedding API, for benchmarks and quota drills: no network, no account.

Each request waits a fixed latency (Titan V2 answers in about 70 ms) and carries a fixed number of
texts; requests run on a bounded thread pool per consumer, as the Titan embedder's do, and pass the
quota limiter like every API request. The vectors are the hashing embedder's, so searches still answer.
"""

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shared.embedders.hashing import HashingEmbedder
from shared.ports import Vectors


class SimulatedApiEmbedder(HashingEmbedder):
    """Hashing vectors, served as an API would: `texts_per_request` texts per request, after a wait."""

    def __init__(
        self,
        dimension: int,
        batch_size: int,
        latency_seconds: float,
        texts_per_request: int,
        concurrency: int,
    ) -> None:
        super().__init__(dimension, batch_size)
        self._latency = latency_seconds
        self._per_request = texts_per_request
        self._concurrency = concurrency
        self.requests = 0
        self._counting = threading.Lock()  # requests run on a pool: `+=` alone could lose a count

    @property
    def name(self) -> str:
        return f"simulated-api-{self.dimension}"

    @property
    def texts_per_request(self) -> int:
        return self._per_request

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        requests = [texts[i : i + self._per_request] for i in range(0, len(texts), self._per_request)]
        with ThreadPoolExecutor(max_workers=min(self._concurrency, len(requests))) as pool:
            return np.vstack(list(pool.map(self._request, requests)))

    def _request(self, texts: Sequence[str]) -> Vectors:
        self._before_request(texts)
        with self._counting:
            self.requests += 1
        time.sleep(self._latency)
        return super()._embed_batch(texts)
