"""The OpenAI-compatible embedder against a real HTTP server on 127.0.0.1 (http.server in a thread)."""

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shared.embedders.base import estimated_tokens
from shared.embedders.openai_compat import OpenAICompatibleEmbedder
from shared.errors import (
    DrugSyncError,
    EmbeddingError,
    ProviderError,
    RejectedTexts,
    ThrottledError,
    UnavailableError,
)

pytestmark = pytest.mark.integration

KEY = "sk-test-hunter2-0123456789"

# What the endpoint answers one request: (HTTP status, JSON body).
Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


def embeddings(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """OpenAI's answer: one item per input, in reverse order (items carry their input's index)."""
    dimension = request.get("dimensions", 8)
    items = [
        {
            "object": "embedding",
            "index": i,
            "embedding": [1.0, float(text.split()[-1])] + [0.0] * (dimension - 2),
        }
        for i, text in enumerate(request["input"])
    ]
    return 200, {"object": "list", "data": items[::-1], "model": request["model"]}


@dataclass
class Endpoint:
    url: str
    answer: Answer = embeddings
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.paths.append(self.path)
            state.headers.append(dict(self.headers))
            state.requests.append(request)
            status, body = state.answer(request)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep pytest's output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def embedder(url: str, dimension: int = 8, per_request: int = 96, **options: Any) -> OpenAICompatibleEmbedder:
    options.setdefault("api_key", KEY)
    return OpenAICompatibleEmbedder(url, "text-embedding-3-small", dimension, 256, per_request, 1, **options)


def index_of(vector: Any) -> int:
    return round(float(vector[1] / vector[0]))


def test_texts_go_in_requests_of_the_configured_size_with_model_dimensions_and_key(endpoint) -> None:
    texts = [f"drug {i}" for i in range(200)]

    vectors = embedder(endpoint.url).embed_texts(texts)

    assert endpoint.paths == ["/v1/embeddings"] * 3
    assert endpoint.requests == [
        {"model": "text-embedding-3-small", "input": texts[0:96], "dimensions": 8},
        {"model": "text-embedding-3-small", "input": texts[96:192], "dimensions": 8},
        {"model": "text-embedding-3-small", "input": texts[192:200], "dimensions": 8},
    ]
    assert all(headers["Authorization"] == f"Bearer {KEY}" for headers in endpoint.headers)
    # The answer lists items in reverse: each vector is put back with its own input by index.
    assert [index_of(vector) for vector in vectors] == list(range(200))


def test_dimensions_are_left_out_for_a_server_that_refuses_them_and_no_key_sends_no_header(endpoint) -> None:
    embedder(endpoint.url, send_dimensions=False, api_key=None, per_request=10).embed_texts(["drug 1"])

    assert endpoint.requests == [{"model": "text-embedding-3-small", "input": ["drug 1"]}]
    assert "Authorization" not in endpoint.headers[0]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, ThrottledError),
        (500, UnavailableError),
        (503, UnavailableError),
        (401, ProviderError),
        (403, ProviderError),
        (404, ProviderError),
    ],
)
def test_errors_are_raised_by_class_without_isolating_any_text(
    endpoint, status: int, expected: type[DrugSyncError]
) -> None:
    endpoint.answer = lambda request: (status, {"error": {"message": f"refused with {status}"}})

    with pytest.raises(DrugSyncError) as raised:
        embedder(endpoint.url).embed_texts([f"drug {i}" for i in range(300)])

    assert type(raised.value) is expected
    assert f"HTTP {status}: refused with {status}" in str(raised.value)
    assert len(endpoint.requests) == 1  # the rest of the batch is not sent


def test_an_endpoint_that_is_not_listening_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the request: nothing listens there
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
        embedder(f"http://127.0.0.1:{port}/v1").embed_texts(["drug 1"])


def test_an_endpoint_that_does_not_answer_in_time_is_unavailable(endpoint) -> None:
    def slow(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        time.sleep(0.5)
        return embeddings(request)

    endpoint.answer = slow
    with pytest.raises(UnavailableError, match="timed out"):
        embedder(endpoint.url, timeout_seconds=0.1).embed_texts(["drug 1"])


def refusing(bad: set[str], message: Callable[[str], str]) -> Answer:
    def answer(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        refused = [text for text in request["input"] if text in bad]
        if refused:
            return 400, {"error": {"message": message(refused[0]), "type": "invalid_request_error"}}
        return embeddings(request)

    return answer


def test_a_text_the_endpoint_refuses_is_named_alone_and_the_others_get_their_vectors(endpoint) -> None:
    texts = [f"drug {i}" for i in range(200)]
    endpoint.answer = refusing({"drug 150"}, lambda text: f"'{text}' is longer than 8192 tokens")

    with pytest.raises(RejectedTexts) as raised:
        embedder(endpoint.url).embed_texts(texts)

    assert list(raised.value.errors) == [150]
    assert type(raised.value.errors[150]) is EmbeddingError
    assert "'drug 150' is longer than 8192 tokens" in str(raised.value.errors[150])
    assert {i: index_of(v) for i, v in raised.value.vectors.items()} == {i: i for i in range(200) if i != 150}
    sent = [request["input"] for request in endpoint.requests]
    assert sent.count(texts[:96]) == 1  # the requests without the refused text are never sent twice
    assert sent.count(texts[192:]) == 1
    assert len(sent) - 2 <= 1 + 2 * math.ceil(math.log2(96))


def test_a_400_that_names_the_model_or_dimensions_blames_no_text(endpoint) -> None:
    endpoint.answer = lambda request: (
        400,
        {
            "error": {
                "message": "This model does not support specifying dimensions.",
                "type": "invalid_request_error",
            }
        },
    )

    with pytest.raises(ProviderError, match="does not support specifying dimensions"):
        embedder(endpoint.url).embed_texts([f"drug {i}" for i in range(96)])

    assert len(endpoint.requests) == 1


def test_the_api_key_an_error_echoes_is_redacted(endpoint) -> None:
    endpoint.answer = lambda request: (401, {"error": {"message": f"Incorrect API key provided: {KEY}."}})

    with pytest.raises(ProviderError) as raised:
        embedder(endpoint.url).embed_texts(["drug 1"])

    assert KEY not in str(raised.value)
    assert "Incorrect API key provided: ***" in str(raised.value)


def test_an_answer_that_is_not_one_vector_per_input_is_an_embedding_error(endpoint) -> None:
    endpoint.answer = lambda request: (200, {"data": [{"index": 0, "embedding": [1.0] * 8}]})

    with pytest.raises(EmbeddingError, match="'data' list of 2"):
        embedder(endpoint.url).embed_texts(["drug 1", "drug 2"])


def test_an_answer_whose_indexes_repeat_is_an_embedding_error_not_a_vector_given_to_the_wrong_text(
    endpoint,
) -> None:
    endpoint.answer = lambda request: (
        200,
        {"data": [{"index": 0, "embedding": [1.0] * 8}, {"index": 0, "embedding": [0.0, 1.0] + [0.0] * 6}]},
    )

    with pytest.raises(EmbeddingError, match=r"not 0\.\.1 once each"):
        embedder(endpoint.url).embed_texts(["drug 1", "drug 2"])


def test_a_query_is_one_input_and_every_request_passes_the_limiter(endpoint) -> None:
    class Limiter:
        def __init__(self) -> None:
            self.admitted: list[tuple[int, int]] = []

        def acquire(self, requests: int, tokens: int) -> None:
            self.admitted.append((requests, tokens))

    subject = embedder(endpoint.url, per_request=3)
    subject.limiter = limiter = Limiter()

    subject.embed_texts([f"drug {i}" for i in range(7)])
    query = subject.embed_query("drug 5")

    assert [request["input"] for request in endpoint.requests][-1] == ["drug 5"]
    assert index_of(query) == 5
    assert limiter.admitted == [(1, estimated_tokens(request["input"])) for request in endpoint.requests]
    assert len(endpoint.requests) == 4  # 3 + 3 + 1, then the query
