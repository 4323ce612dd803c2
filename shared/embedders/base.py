"""Batching shared by every embedder: providers implement one call over one batch."""

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from shared.errors import EmbeddingError, RejectedTexts
from shared.ports import RequestLimiter, Vectors


class BatchingEmbedder(ABC):
    """Splits texts into batches of `batch_size`, embeds each with one provider call, stacks them."""

    def __init__(self, dimension: int, batch_size: int) -> None:
        self._dimension = dimension
        self.batch_size = batch_size
        self.calls = 0
        # Set by the wiring when an embedding quota is configured; every API request passes through it.
        self.limiter: RequestLimiter | None = None

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    def texts_per_request(self) -> int | None:
        """Texts one request to the provider's API carries; None for a local embedder (no API, no quota)."""
        return None

    def _before_request(self, texts: Sequence[str]) -> None:
        """Called by an API embedder right before each request it sends, with the texts it carries."""
        if self.limiter is not None:
            self.limiter.acquire(1, estimated_tokens(texts))

    def embed_query(self, text: str) -> Vectors:
        """A search's vector; a provider that embeds queries unlike documents (Cohere) overrides it."""
        vector: Vectors = self.embed_texts([text])[0]
        return vector

    @abstractmethod
    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        """Embed one batch with one provider call; returns shape (len(texts), dimension)."""

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        """Every text's vector; RejectedTexts (positions in `texts`) if a provider refused some alone."""
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        vectors: dict[int, Vectors] = {}
        errors: dict[int, EmbeddingError] = {}
        for start in range(0, len(texts), self.batch_size):
            try:
                batch = self._embed_checked(texts[start : start + self.batch_size])
            except RejectedTexts as rejected:
                # Keep embedding the other batches: their vectors are wanted either way.
                vectors.update({start + i: vector for i, vector in rejected.vectors.items()})
                errors.update({start + i: error for i, error in rejected.errors.items()})
            else:
                vectors.update({start + i: vector for i, vector in enumerate(batch)})
        if errors:
            raise RejectedTexts(vectors, errors)
        return np.vstack([vectors[i] for i in range(len(texts))])

    def _embed_checked(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        vectors = self._embed_batch(texts)
        if vectors.shape != (len(texts), self._dimension):
            raise EmbeddingError(
                f"{self.name} returned shape {vectors.shape} for {len(texts)} texts,"
                f" expected ({len(texts)}, {self._dimension})"
            )
        return vectors


def estimated_tokens(texts: Sequence[str]) -> int:
    """Tokens a request's texts count against a tokens-per-minute quota, estimated without a tokenizer:
    about four characters a token for English catalog text, and at least one per text."""
    return sum(max(1, len(text) // 4) for text in texts)
