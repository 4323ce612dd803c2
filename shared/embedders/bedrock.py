"""Amazon Bedrock Titan Text Embeddings V2 through bedrock-runtime InvokeModel.

Titan V2 takes one `inputText` per request (https://docs.aws.amazon.com/bedrock/latest/userguide/
model-parameters-titan-embed-text.html), so a batch is fanned out over a bounded thread pool
rather than sent one text at a time in sequence.
"""

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.embedders.base import BatchingEmbedder
from shared.errors import DrugSyncError, EmbeddingError, ThrottledError, UnavailableError
from shared.ports import Vectors

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient

_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ServiceUnavailableException",
        "ModelNotReadyException",
        "InternalServerException",
        "ModelTimeoutException",
    }
)


def _error_kind(code: str) -> type[DrugSyncError]:
    if code == "ThrottlingException":
        return ThrottledError
    return UnavailableError if code in _RETRYABLE_CODES else EmbeddingError


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

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        workers = min(self._concurrency, len(texts))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(self._embed_one, texts))
        return np.asarray(rows, dtype=np.float32)

    def _embed_one(self, text: str) -> list[float]:
        from botocore.exceptions import BotoCoreError, ClientError

        body = {"inputText": text, "dimensions": self.dimension, "normalize": True}
        try:
            response = self._client.invoke_model(
                modelId=self._model_id,
                body=json.dumps(body),
                contentType="application/json",
                accept="application/json",
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            kind = _error_kind(code)
            raise kind(f"bedrock {self._model_id}: {code}: {error}") from error
        except BotoCoreError as error:
            raise UnavailableError(f"bedrock {self._model_id}: {error}") from error
        payload: dict[str, Any] = json.loads(response["body"].read())
        embedding = payload.get("embedding")
        if not isinstance(embedding, list):
            raise EmbeddingError(f"bedrock {self._model_id}: response has no 'embedding' list")
        return embedding
