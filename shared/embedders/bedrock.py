"""Amazon Bedrock Titan Text Embeddings V2 through bedrock-runtime InvokeModel.

Titan V2 takes one `inputText` per request (https://docs.aws.amazon.com/bedrock/latest/userguide/
model-parameters-titan-embed-text.html), so a batch is fanned out over a bounded thread pool
rather than sent one text at a time in sequence. Each text gets its own answer: a refused text is
reported by position beside the vectors of the others (RejectedTexts), never by failing the batch.
"""

import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.embedders.base import BatchingEmbedder
from shared.errors import (
    DrugSyncError,
    EmbeddingError,
    ProviderError,
    RejectedTexts,
    ThrottledError,
    UnavailableError,
)
from shared.ports import Vectors

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient

# InvokeModel's errors: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html
_TRANSIENT_CODES = frozenset(
    {"ServiceUnavailableException", "InternalServerException", "ModelTimeoutException"}
)
# The account or the model is at fault, whatever the text: no access or no subscription to the model,
# no such model, a quota used up, a model not deployed for this account yet.
_PROVIDER_CODES = frozenset(
    {
        "AccessDeniedException",
        "ResourceNotFoundException",
        "ServiceQuotaExceededException",
        "ModelNotReadyException",
        "UnrecognizedClientException",
    }
)
# A ValidationException that names the request's model rather than its text: "The provided model
# identifier is invalid.", "Invocation of model ID ... with on-demand throughput isn't supported. Retry
# your request with ... an inference profile". A text's own fault reads "Malformed input request: ...".
_MODEL_FAULTS = ("model identifier", "on-demand throughput", "inference profile")

# What one text's request came to: its vector, or the error that names that text alone.
_Answer = list[float] | EmbeddingError | None


def classify_client_error(code: str, status: int, message: str) -> type[DrugSyncError]:
    """The project's error for one InvokeModel failure, from its code, HTTP status and message."""
    if code == "ThrottlingException":
        return ThrottledError
    if code in _TRANSIENT_CODES or status >= 500:
        return UnavailableError
    if code in _PROVIDER_CODES or status == 403:
        return ProviderError
    if status == 429:
        return ThrottledError
    if code == "ValidationException" and any(fault in message.lower() for fault in _MODEL_FAULTS):
        return ProviderError
    return EmbeddingError


class TitanEmbedder(BatchingEmbedder):
    """Titan Text Embeddings V2 at 256, 512 or 1024 dimensions, normalised by the service."""

    def __init__(
        self,
        client: "BedrockRuntimeClient",
        model_id: str,
        dimension: int,
        batch_size: int,
        concurrency: int,
    ) -> None:
        super().__init__(dimension, batch_size)
        self._client = client
        self._model_id = model_id
        self._concurrency = concurrency

    @property
    def name(self) -> str:
        return f"{self._model_id}-{self.dimension}"

    @property
    def texts_per_request(self) -> int:
        return 1  # Titan Text Embeddings V2 embeds one text per InvokeModel

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        answers = self._invoke_each(texts)
        refused = {i: answer for i, answer in enumerate(answers) if isinstance(answer, EmbeddingError)}
        if not refused:
            return np.asarray(answers, dtype=np.float32)
        if len(texts) > 1 and len(refused) == len(texts) and len({str(e) for e in refused.values()}) == 1:
            # Every text refused alike: the model or our request settings are wrong, not 256 texts.
            raise ProviderError(
                f"bedrock {self._model_id}: all {len(texts)} texts refused alike: {refused[0]}"
            ) from refused[0]
        vectors = {
            i: np.asarray(answer, dtype=np.float32)
            for i, answer in enumerate(answers)
            if isinstance(answer, list)
        }
        raise RejectedTexts(vectors, refused)

    def _invoke_each(self, texts: Sequence[str]) -> list[_Answer]:
        """One request per text; the first failure that is not the text's own stops the rest unsent."""
        halted = threading.Event()

        def invoke(text: str) -> _Answer:
            if halted.is_set():
                return None  # skipped; pool.map raises the earlier text's error before reaching this
            try:
                return self._embed_one(text)
            except EmbeddingError as error:
                return error
            except DrugSyncError:
                # Set before the future fails, so a worker never starts another request after it.
                halted.set()
                raise

        with ThreadPoolExecutor(max_workers=min(self._concurrency, len(texts))) as pool:
            return list(pool.map(invoke, texts))

    def _embed_one(self, text: str) -> list[float]:
        from botocore.exceptions import BotoCoreError, ClientError

        body = {"inputText": text, "dimensions": self.dimension, "normalize": True}
        self._before_request([text])
        try:
            response = self._client.invoke_model(
                modelId=self._model_id,
                body=json.dumps(body),
                contentType="application/json",
                accept="application/json",
            )
        except ClientError as error:
            raise self._translate(error) from error
        except BotoCoreError as error:
            raise UnavailableError(f"bedrock {self._model_id}: {error}") from error
        payload: dict[str, Any] = json.loads(response["body"].read())
        embedding = payload.get("embedding")
        if not isinstance(embedding, list):
            raise EmbeddingError(f"bedrock {self._model_id}: response has no 'embedding' list")
        if len(embedding) != self.dimension:
            raise EmbeddingError(
                f"bedrock {self._model_id}: embedding of shape ({len(embedding)},),"
                f" expected ({self.dimension},)"
            )
        return embedding

    def _translate(self, error: "ClientError") -> DrugSyncError:
        return translate_client_error(error, self._model_id)


def translate_client_error(error: "ClientError", model_id: str) -> DrugSyncError:
    """The project's error for a failed InvokeModel, naming the model and the service's code."""
    details = error.response.get("Error", {})
    code, message = details.get("Code", ""), details.get("Message", "")
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    kind = classify_client_error(code, status, message)
    return kind(f"bedrock {model_id}: {code}: {error}")
