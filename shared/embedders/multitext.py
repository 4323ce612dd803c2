"""What every API that embeds many texts per request shares: requests of up to `texts_per_request`
texts sent over a bounded thread pool, and the texts a request is refused for found by halving it.

One text the API refuses fails its whole request. The refused request alone is halved and both halves
sent again until the refused texts stand alone: k refused texts among the n of a request cost at most
1 + 2k*ceil(log2 n) requests (one among 96: at most 15, and about three times that request's tokens)
instead of 1; the batch's other requests are never sent twice. The refused texts come back in
RejectedTexts beside the vectors of all the others, so the consumer fails only their rows.
"""

import threading
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shared.embedders.base import BatchingEmbedder
from shared.errors import DrugSyncError, EmbeddingError, ProviderError, RejectedTexts, UnavailableError
from shared.ports import Vectors

# What one text came to: its vector, or the error the API refused it with alone.
_Answer = Vectors | EmbeddingError


class RefusedRequest(EmbeddingError):
    """The API refused a request as invalid (HTTP 400, ValidationException): some text of it is at fault."""


class _Halted(UnavailableError):
    """A request left unsent because another request of the same batch failed first."""


class MultiTextEmbedder(BatchingEmbedder):
    """Sends `texts_per_request` texts a request, `concurrency` requests at once; providers implement
    `_request` (one request; RefusedRequest when the API blames the texts, the project's other errors
    otherwise)."""

    def __init__(
        self, dimension: int, batch_size: int, texts_per_request: int, concurrency: int, label: str
    ) -> None:
        super().__init__(dimension, batch_size)
        self._per_request = texts_per_request
        self._concurrency = concurrency
        self._label = label  # names the provider and model in every error
        self.requests = 0

    @property
    def texts_per_request(self) -> int:
        return self._per_request

    @abstractmethod
    def _request(self, texts: Sequence[str], query: bool) -> Vectors:
        """One request for these texts (embedded as documents, or as one search query): their vectors."""

    def embed_query(self, text: str) -> Vectors:
        vector: Vectors = self._checked([text], query=True)[0]
        return vector

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        per = self._per_request
        chunks = [texts[i : i + per] for i in range(0, len(texts), per)]
        halted = threading.Event()

        def embed(chunk: Sequence[str]) -> list[_Answer] | DrugSyncError:
            try:
                return self._embed_isolating(chunk, halted)
            except DrugSyncError as error:
                halted.set()  # throttled, unavailable, refused as an account: send nothing more
                return error

        with ThreadPoolExecutor(max_workers=min(self._concurrency, len(chunks))) as pool:
            results = list(pool.map(embed, chunks))
        failures = [result for result in results if isinstance(result, DrugSyncError)]
        if failures:
            # The failure that halted the others, not a request left unsent because of it.
            raise next((error for error in failures if not isinstance(error, _Halted)), failures[0])
        return self._gathered([answer for result in results if isinstance(result, list) for answer in result])

    def _embed_isolating(self, texts: Sequence[str], halted: threading.Event) -> list[_Answer]:
        """Each text's vector, halving a refused request until the texts at fault stand alone."""
        if halted.is_set():
            raise _Halted(f"{self._label}: not sent: another request of the batch failed")
        try:
            return list(self._checked(texts, query=False))
        except RefusedRequest as refused:
            if len(texts) == 1:
                return [EmbeddingError(str(refused))]  # named by its public class in the ledger and DLQ
            middle = len(texts) // 2
            left = self._embed_isolating(texts[:middle], halted)
            return left + self._embed_isolating(texts[middle:], halted)

    def _checked(self, texts: Sequence[str], query: bool) -> Vectors:
        """One request, counted and admitted by the limiter; its vectors checked and made unit length."""
        self._before_request(texts)
        self.requests += 1
        vectors = self._request(texts, query)
        if vectors.shape != (len(texts), self.dimension):
            raise EmbeddingError(
                f"{self._label}: embeddings of shape {vectors.shape},"
                f" expected ({len(texts)}, {self.dimension})"
            )
        return unit_rows(vectors)

    def _gathered(self, answers: list[_Answer]) -> Vectors:
        refused = {i: answer for i, answer in enumerate(answers) if isinstance(answer, EmbeddingError)}
        vectors = {i: answer for i, answer in enumerate(answers) if not isinstance(answer, EmbeddingError)}
        if not refused:
            return np.vstack([vectors[i] for i in range(len(answers))])
        if len(answers) > 1 and len(refused) == len(answers) and len({str(e) for e in refused.values()}) == 1:
            # Every text refused alike: the model or our request is wrong, not every text of the batch.
            raise ProviderError(
                f"{self._label}: all {len(answers)} texts refused alike: {refused[0]}"
            ) from refused[0]
        raise RejectedTexts(vectors, refused)


def as_vectors(rows: object, label: str) -> Vectors:
    """An API's list of float lists as a matrix; EmbeddingError when it is not one."""
    try:
        vectors: Vectors = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError) as error:  # ragged rows, or not numbers
        raise EmbeddingError(f"{label}: embeddings are not a list of equal-length float lists") from error
    return vectors


def unit_rows(vectors: Vectors) -> Vectors:
    """Each row scaled to length 1 (a zero row stays zero): the index compares by cosine."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalised: Vectors = (vectors / norms).astype(np.float32)
    return normalised
