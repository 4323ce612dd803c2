"""Cohere Embed v3 and v4 on Amazon Bedrock through bedrock-runtime InvokeModel, 96 texts a request.

Request and response bodies: https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed-v3.html
and .../model-parameters-embed-v4.html. Documents are embedded as `search_document`, queries as
`search_query` (the model prepends a different token to each; mixing them up costs recall). A text
the model refuses is found by halving its request (shared/embedders/multitext.py says what it costs).
"""

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.bedrock_models import bedrock_model
from shared.embedders.bedrock import translate_client_error
from shared.embedders.multitext import MultiTextEmbedder, RefusedRequest, as_vectors
from shared.errors import ConfigError, EmbeddingError, UnavailableError
from shared.ports import Vectors

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime import BedrockRuntimeClient

TEXTS_PER_REQUEST = 96  # the most texts one Embed request takes, v3 and v4 alike
# Too long a text is embedded from its beginning (name, strength, form come first) rather than refused;
# v3 spells the end END, v4 RIGHT.
_TRUNCATE_END = {"cohere-v3": "END", "cohere-v4": "RIGHT"}
# v3 takes at most 2,048 characters a text whatever `truncate` says; cut here, a longer text would cost
# its request a halving to be refused alone. v4 takes about 128,000 tokens.
_V3_MAX_CHARS = 2048


class CohereEmbedder(MultiTextEmbedder):
    """Cohere Embed English/Multilingual v3 (1024 dimensions) or Embed v4 (256 to 1536) on Bedrock."""

    def __init__(
        self,
        client: "BedrockRuntimeClient",
        model_id: str,
        dimension: int,
        batch_size: int,
        concurrency: int,
    ) -> None:
        model = bedrock_model(model_id)
        if model.family not in _TRUNCATE_END:
            raise ConfigError(f"{model_id} is not a Cohere Embed model")
        if dimension not in model.dimensions:
            raise ConfigError(f"{model.base_id} offers {model.dimensions} dimensions, not {dimension}")
        super().__init__(dimension, batch_size, TEXTS_PER_REQUEST, concurrency, f"bedrock {model_id}")
        self._client = client
        self._model_id = model_id
        self._model = model

    @property
    def name(self) -> str:
        # The foundation model's id, not the inference profile's: every Region of a profile serves the
        # same model, so reaching it another way must not rebuild the index.
        return f"{self._model.base_id}-{self.dimension}"

    def _request(self, texts: Sequence[str], query: bool) -> Vectors:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.invoke_model(
                modelId=self._model_id,
                body=json.dumps(self._body(texts, query)),
                contentType="application/json",
                accept="application/json",
            )
        except ClientError as error:
            translated = translate_client_error(error, self._model_id)
            if type(translated) is EmbeddingError:  # a ValidationException that blames the input
                raise RefusedRequest(str(translated)) from error
            raise translated from error
        except BotoCoreError as error:
            raise UnavailableError(f"bedrock {self._model_id}: {error}") from error
        return self._vectors(json.loads(response["body"].read()), len(texts))

    def _body(self, texts: Sequence[str], query: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "texts": [text[:_V3_MAX_CHARS] for text in texts]
            if self._model.family == "cohere-v3"
            else list(texts),
            "input_type": "search_query" if query else "search_document",
            "truncate": _TRUNCATE_END[self._model.family],
            "embedding_types": ["float"],
        }
        if self._model.family == "cohere-v4":
            body["output_dimension"] = self.dimension
        return body

    def _vectors(self, payload: dict[str, Any], count: int) -> Vectors:
        """The float vectors of either response shape.

        `embeddings_by_type` (embedding_types was sent): {"embeddings": {"float": [[...], ...]}};
        `embeddings_floats` (v3 without embedding_types): {"embeddings": [[...], ...]}.
        """
        embeddings = payload.get("embeddings")
        if isinstance(embeddings, dict):
            embeddings = embeddings.get("float")
        if not isinstance(embeddings, list) or len(embeddings) != count:
            raise EmbeddingError(
                f"bedrock {self._model_id}: response has no {count} float embeddings"
                f" (response_type {payload.get('response_type')!r})"
            )
        return as_vectors(embeddings, self._label)
