"""Any OpenAI-compatible embeddings endpoint (OpenAI, Azure-style gateways, vLLM, Ollama, TEI, LiteLLM):
POST {base_url}/embeddings {"model", "input": [...], "dimensions"?}, many inputs per request.

https://platform.openai.com/docs/api-reference/embeddings/create. Standard library only (urllib): a
Lambda carries no HTTP client for it. A text the endpoint refuses (HTTP 400) is found by halving its
request (shared/embedders/multitext.py says what it costs).
"""

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.embedders.multitext import MultiTextEmbedder, RefusedRequest, as_vectors
from shared.errors import (
    ConfigError,
    DrugSyncError,
    EmbeddingError,
    ProviderError,
    ThrottledError,
    UnavailableError,
)
from shared.ports import Vectors
from shared.redact import redact_secrets, remember_secret

if TYPE_CHECKING:
    from shared.settings import Settings

# Statuses that blame the request's input: halve it to find the texts at fault.
_INPUT_STATUSES = frozenset({400, 413, 422})
# A 400 that blames the model or our settings rather than a text ("This model does not support
# specifying dimensions.", "The model `x` does not exist"): no text is isolated for it.
_MODEL_FAULTS = ("dimensions", "does not exist", "model not found", "invalid model")
_MESSAGE_CHARS = 300  # of an error body, in our errors (the ledger and DLQ keep them)


class OpenAICompatibleEmbedder(MultiTextEmbedder):
    """Embeddings from POST {base_url}/embeddings, `texts_per_request` inputs at a time."""

    def __init__(
        self,
        base_url: str,
        model: str,
        dimension: int,
        batch_size: int,
        texts_per_request: int,
        concurrency: int,
        api_key: str | None = None,
        send_dimensions: bool = True,
        timeout_seconds: float = 30.0,
    ) -> None:
        super().__init__(dimension, batch_size, texts_per_request, concurrency, f"openai {model}")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"DRUGSYNC_OPENAI_BASE_URL {base_url!r} must be an http:// or https:// URL")
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._api_key = api_key
        self._send_dimensions = send_dimensions
        self._timeout = timeout_seconds
        if api_key:
            remember_secret(api_key)  # any error text that echoes it is redacted on its way out

    @classmethod
    def from_settings(cls, settings: "Settings") -> "OpenAICompatibleEmbedder":
        if not settings.openai_base_url:
            raise ValueError("DRUGSYNC_OPENAI_BASE_URL is not set")  # Settings refuses this earlier
        return cls(
            settings.openai_base_url,
            settings.openai_model,
            settings.embedding_dim,
            settings.embed_batch_size,
            settings.openai_texts_per_request,
            settings.bedrock_concurrency,
            api_key=api_key(settings),
            send_dimensions=settings.openai_send_dimensions,
            timeout_seconds=settings.openai_timeout_seconds,
        )

    @property
    def name(self) -> str:
        return f"openai:{self._model}-{self.dimension}"

    def _request(self, texts: Sequence[str], query: bool) -> Vectors:
        body: dict[str, Any] = {"model": self._model, "input": list(texts)}
        if self._send_dimensions:
            body["dimensions"] = self.dimension
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        # The scheme is http(s), checked at construction: no file:// or custom opener reaches here.
        request = urllib.request.Request(self._url, json.dumps(body).encode(), headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                payload = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise self._translate(error.code, _error_message(error)) from error
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            # Connection refused or reset, DNS, TLS, timeout: the endpoint may answer again.
            raise UnavailableError(self._safe(f"{self._label}: {self._url}: {error}")) from error
        except ValueError as error:  # json.JSONDecodeError: a proxy's HTML page, say
            raise EmbeddingError(f"{self._label}: the response is not JSON: {error}") from error
        return self._vectors(payload, len(texts))

    def _translate(self, status: int, message: str) -> DrugSyncError:
        text = self._safe(f"{self._label}: HTTP {status}: {message}")
        if status == 429:
            return ThrottledError(text)
        if status >= 500 or status == 408:
            return UnavailableError(text)
        if status in _INPUT_STATUSES and not any(fault in message.lower() for fault in _MODEL_FAULTS):
            return RefusedRequest(text)
        # 401 bad key, 403 no access, 404 no such model or path, a 400 naming the model: no text at fault.
        return ProviderError(text)

    def _vectors(self, payload: Any, count: int) -> Vectors:
        """The vectors in input order: each item of `data` carries the `index` of its input."""
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or len(data) != count:
            raise EmbeddingError(f"{self._label}: response has no 'data' list of {count} embeddings")
        try:
            ordered = sorted(data, key=lambda item: int(item["index"]))
            indexes = [int(item["index"]) for item in ordered]
            rows = [item["embedding"] for item in ordered]
        except (KeyError, TypeError, ValueError) as error:
            raise EmbeddingError(f"{self._label}: response items lack 'index' or 'embedding'") from error
        if indexes != list(range(count)):
            # A repeated or missing index would hand some text another text's vector.
            raise EmbeddingError(f"{self._label}: response indexes are not 0..{count - 1} once each")
        return as_vectors(rows, self._label)

    def _safe(self, text: str) -> str:
        return redact_secrets(text, [self._api_key]) if self._api_key else text


def api_key(settings: "Settings") -> str | None:
    """DRUGSYNC_OPENAI_API_KEY, else the key in DRUGSYNC_OPENAI_API_KEY_SECRET_ARN (plain, or
    JSON {"api_key": ...}), else none (a local server that wants no key)."""
    if settings.openai_api_key is not None:
        return settings.openai_api_key.get_secret_value()
    if not settings.openai_api_key_secret_arn:
        return None
    import boto3

    from shared.secrets import read_secret

    arn = settings.openai_api_key_secret_arn
    key: object = read_secret(boto3.client("secretsmanager"), arn, "OpenAI API key").strip()
    if isinstance(key, str) and key.startswith("{"):
        try:
            key = json.loads(key).get("api_key")
        except (ValueError, AttributeError):
            key = None
    if not isinstance(key, str) or not key:
        raise ConfigError(f'OpenAI API key secret {arn}: neither a key nor JSON with a string "api_key"')
    remember_secret(key)  # any error text that echoes it is redacted on its way out
    return key


def _error_message(error: urllib.error.HTTPError) -> str:
    """The endpoint's own words: {"error": {"message": ...}} when it sends them, else the body's start."""
    try:
        raw = error.read().decode(errors="replace")
    except OSError:
        return str(error.reason)
    try:
        details = json.loads(raw).get("error")
        message = details.get("message") if isinstance(details, dict) else details
    except (ValueError, AttributeError):
        message = None
    return str(message or raw or error.reason)[:_MESSAGE_CHARS]
