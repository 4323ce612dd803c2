"""Cohere Embed v3/v4 on Bedrock: exact request bodies (Stubber), both response shapes, errors by class,
and the isolation of a refused text by halving its request (an answering fake behind botocore's send)."""

import io
import json
import math
from collections.abc import Callable
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.response import StreamingBody
from botocore.stub import Stubber
from urllib3.response import HTTPResponse

from shared.embedders.base import estimated_tokens
from shared.embedders.cohere import CohereEmbedder
from shared.errors import (
    ConfigError,
    DrugSyncError,
    EmbeddingError,
    ProviderError,
    RejectedTexts,
    ThrottledError,
    UnavailableError,
)
from tests.factories import refuse

V3 = "cohere.embed-english-v3"
V4_PROFILE = "us.cohere.embed-v4:0"
TOO_LONG = "Malformed input request: #/texts/0: expected maxLength: 2048, actual: 3000"


def cohere_response(vectors: list[list[float]], by_type: bool = True) -> dict[str, object]:
    """An InvokeModel answer of Cohere Embed: embeddings_by_type, or v3's bare embeddings_floats."""
    embeddings: object = {"float": vectors} if by_type else vectors
    response_type = "embeddings_by_type" if by_type else "embeddings_floats"
    payload = json.dumps({"id": "x", "embeddings": embeddings, "response_type": response_type, "texts": []})
    data = payload.encode()
    return {"body": StreamingBody(io.BytesIO(data), len(data)), "contentType": "application/json"}


def expect(stubber: Stubber, model_id: str, body: dict[str, Any], vectors: list[list[float]]) -> None:
    stubber.add_response(
        "invoke_model",
        cohere_response(vectors),
        {
            "modelId": model_id,
            "body": json.dumps(body),
            "contentType": "application/json",
            "accept": "application/json",
        },
    )


def cohere(client: Any, model_id: str = V3, dimension: int = 1024, concurrency: int = 1) -> CohereEmbedder:
    # One worker unless asked: the Stubber answers requests in the order they are sent.
    return CohereEmbedder(client, model_id, dimension, batch_size=256, concurrency=concurrency)


def test_v3_sends_96_texts_a_request_as_documents_with_truncation_and_float_embeddings(bedrock) -> None:
    client, stubber = bedrock
    texts = [f"drug {i}" for i in range(200)]
    for start, end in ((0, 96), (96, 192), (192, 200)):
        body = {
            "texts": texts[start:end],
            "input_type": "search_document",
            "truncate": "END",
            "embedding_types": ["float"],
        }
        expect(stubber, V3, body, [[float(i)] + [1.0] * 1023 for i in range(start, end)])

    vectors = cohere(client).embed_texts(texts)

    stubber.assert_no_pending_responses()
    assert vectors.shape == (200, 1024)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # Each vector stays with its own text across the three requests.
    assert [round(float(v[0] / v[1])) for v in vectors] == list(range(200))


def test_v4_through_an_inference_profile_asks_for_its_output_dimension(bedrock) -> None:
    client, stubber = bedrock
    body = {
        "texts": ["aspirin 81 mg tablet"],
        "input_type": "search_document",
        "truncate": "RIGHT",
        "embedding_types": ["float"],
        "output_dimension": 256,
    }
    expect(stubber, V4_PROFILE, body, [[0.5] * 256])

    embedder = cohere(client, V4_PROFILE, 256)
    vectors = embedder.embed_texts(["aspirin 81 mg tablet"])

    stubber.assert_no_pending_responses()
    assert vectors.shape == (1, 256)
    assert embedder.name == "cohere.embed-v4:0-256"  # the model, however it is reached
    assert embedder.texts_per_request == 96


@pytest.mark.parametrize(("model_id", "sent_chars"), [(V3, 2048), (V4_PROFILE, 3000)])
def test_v3_is_sent_at_most_its_2048_characters_a_text_and_v4_the_whole_text(
    bedrock, model_id: str, sent_chars: int
) -> None:
    client, stubber = bedrock
    sent: list[int] = []
    client.meta.events.register(
        "provide-client-params.bedrock-runtime.InvokeModel",
        lambda params, **kwargs: sent.extend(len(text) for text in json.loads(params["body"])["texts"]),
    )
    expect_any(stubber, 2)

    cohere(client, model_id).embed_texts(["x" * 3000, "short"])

    assert sent == [sent_chars, 5]


@pytest.mark.parametrize("model_id", [V3, V4_PROFILE])
def test_a_query_is_embedded_as_a_search_query(bedrock, model_id: str) -> None:
    client, stubber = bedrock
    dimension = 1024
    body: dict[str, Any] = {
        "texts": ["amoxicillin capsule"],
        "input_type": "search_query",
        "truncate": "END" if model_id == V3 else "RIGHT",
        "embedding_types": ["float"],
    }
    if model_id == V4_PROFILE:
        body["output_dimension"] = dimension
    expect(stubber, model_id, body, [[3.0, 4.0] + [0.0] * (dimension - 2)])

    vector = cohere(client, model_id, dimension).embed_query("amoxicillin capsule")

    stubber.assert_no_pending_responses()
    assert vector.shape == (dimension,)
    assert vector[:2].tolist() == pytest.approx([0.6, 0.8])


@pytest.mark.parametrize("by_type", [True, False], ids=["embeddings_by_type", "embeddings_floats"])
def test_both_response_shapes_are_read(bedrock, by_type: bool) -> None:
    client, stubber = bedrock
    stubber.add_response(
        "invoke_model", cohere_response([[1.0] + [0.0] * 1023, [0.0, 2.0] + [0.0] * 1022], by_type)
    )

    vectors = cohere(client).embed_texts(["first", "second"])

    assert vectors[0, 0] == 1.0
    assert vectors[1, 1] == 1.0


@pytest.mark.parametrize(
    "payload",
    [{"embeddings": {"int8": [[1] * 1024]}}, {"embeddings": [[0.5] * 512]}, {"message": "no embeddings"}],
    ids=["no float type", "wrong dimension", "no embeddings"],
)
def test_an_answer_without_the_float_vectors_asked_for_is_an_embedding_error(bedrock, payload) -> None:
    client, stubber = bedrock
    data = json.dumps(payload).encode()
    stubber.add_response(
        "invoke_model",
        {"body": StreamingBody(io.BytesIO(data), len(data)), "contentType": "application/json"},
    )

    with pytest.raises(EmbeddingError, match="embeddings"):
        cohere(client).embed_texts(["text"])


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        ("ThrottlingException", 429, "Too many requests, please wait before trying again.", ThrottledError),
        ("ServiceUnavailableException", 503, "", UnavailableError),
        ("ModelTimeoutException", 408, "", UnavailableError),
        ("AccessDeniedException", 403, "You don't have access to the model with the specified model ID.", ProviderError),
        ("ResourceNotFoundException", 404, "Could not resolve the foundation model.", ProviderError),
        ("ValidationException", 400, "Invocation of model ID cohere.embed-v4:0 with on-demand throughput isn't supported.", ProviderError),
    ],
)  # fmt: skip
def test_errors_of_the_service_account_or_model_are_raised_by_class_without_isolating(
    bedrock, code: str, status: int, message: str, expected: type[DrugSyncError]
) -> None:
    client, stubber = bedrock
    refuse(stubber, code, status, message)  # one answer only: a second request would fail the Stubber

    with pytest.raises(DrugSyncError) as raised:
        cohere(client).embed_texts([f"drug {i}" for i in range(96)])

    assert type(raised.value) is expected
    assert code in str(raised.value)


def test_an_error_of_the_service_stops_the_batch_requests_not_yet_sent(bedrock) -> None:
    client, stubber = bedrock
    sent: list[int] = []
    client.meta.events.register(
        "provide-client-params.bedrock-runtime.InvokeModel",
        lambda params, **kwargs: sent.append(len(json.loads(params["body"])["texts"])),
    )
    expect_any(stubber, 96)
    refuse(stubber, "ThrottlingException", 429, "Too many requests")

    with pytest.raises(ThrottledError):
        cohere(client).embed_texts([f"drug {i}" for i in range(96 * 3)])

    assert sent == [96, 96]  # the third request is never sent


def expect_any(stubber: Stubber, count: int) -> None:
    stubber.add_response("invoke_model", cohere_response([[1.0] * 1024] * count))


@pytest.mark.parametrize(
    ("model_id", "dimension", "named"),
    [
        (V3, 512, "1024"),
        ("us.cohere.embed-v4:0", 384, "1536"),
        ("amazon.titan-embed-text-v2:0", 1024, "Cohere"),
    ],
)
def test_a_model_or_dimension_cohere_does_not_offer_is_refused_at_construction(
    bedrock, model_id: str, dimension: int, named: str
) -> None:
    client, _ = bedrock
    with pytest.raises(ConfigError, match=named):
        CohereEmbedder(client, model_id, dimension, batch_size=16, concurrency=1)


class FakeCohere:
    """Bedrock's Cohere Embed behind the client's send: refuses any request carrying a bad text
    (ValidationException, as the service does for the whole request), embeds the others."""

    def __init__(
        self, client: Any, bad: set[str], refusal: Callable[[str], str] = lambda text: TOO_LONG
    ) -> None:
        self.bad = bad
        self.refusal = refusal
        self.requests: list[list[str]] = []
        client.meta.events.register("before-send.bedrock-runtime.InvokeModel", self._send)

    def _send(self, request: Any, **kwargs: Any) -> AWSResponse:
        texts = json.loads(request.body)["texts"]
        self.requests.append(texts)
        refused = [text for text in texts if text in self.bad]
        if refused:
            body = {"message": self.refusal(refused[0])}
            return _response(request.url, 400, body, {"x-amzn-ErrorType": "ValidationException"})
        vectors = [[1.0, _number(text)] + [0.0] * 1022 for text in texts]
        return _response(
            request.url, 200, {"embeddings": {"float": vectors}, "response_type": "embeddings_by_type"}
        )


def _number(text: str) -> float:
    """The number a test text ends with ("drug 7"), so a vector can be traced back to its text."""
    last = text.split()[-1]
    return float(last) if last.isdigit() else 0.0


def _response(
    url: str, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> AWSResponse:
    data = json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
    raw = HTTPResponse(body=io.BytesIO(data), status=status, headers=all_headers, preload_content=False)
    return AWSResponse(url, status, HTTPHeaders.from_dict(all_headers), raw)


@pytest.fixture
def client() -> Any:
    return boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


def test_one_refused_text_among_200_is_named_alone_and_the_rest_get_their_vectors(client) -> None:
    texts = [f"drug {i}" for i in range(200)]
    fake = FakeCohere(client, bad={"drug 137"})

    with pytest.raises(RejectedTexts) as raised:
        cohere(client).embed_texts(texts)

    assert list(raised.value.errors) == [137]
    assert type(raised.value.errors[137]) is EmbeddingError  # the DLQ names a public class
    assert "maxLength" in str(raised.value.errors[137])
    assert sorted(raised.value.vectors) == [i for i in range(200) if i != 137]
    assert all(round(float(v[1] / v[0])) == i for i, v in raised.value.vectors.items())  # its own vector
    # Only the refused request (texts 96..191) is halved: the other two are sent once each.
    assert fake.requests.count(texts[:96]) == 1
    assert fake.requests.count(texts[192:]) == 1
    assert all(
        set(request) <= set(texts[96:192])
        for request in fake.requests
        if request not in (texts[:96], texts[192:])
    )
    # The named cost: at most 1 + 2*ceil(log2 96) requests for the refused one.
    assert len(fake.requests) - 2 <= 1 + 2 * math.ceil(math.log2(96))


def test_each_of_several_refused_texts_is_named_with_its_own_error(client) -> None:
    bad = {"drug 3", "drug 50", "drug 51"}
    FakeCohere(client, bad, refusal=lambda text: f"Malformed input request: {text} is refused")

    with pytest.raises(RejectedTexts) as raised:
        cohere(client).embed_texts([f"drug {i}" for i in range(96)])

    assert sorted(raised.value.errors) == [3, 50, 51]
    assert all(f"drug {i} is refused" in str(raised.value.errors[i]) for i in (3, 50, 51))
    assert sorted(raised.value.vectors) == [i for i in range(96) if i not in (3, 50, 51)]


def test_every_text_refused_alike_is_the_model_at_fault_not_the_rows(client) -> None:
    FakeCohere(
        client, bad={f"drug {i}" for i in range(4)}, refusal=lambda text: "Malformed input request: bad"
    )

    with pytest.raises(ProviderError, match="all 4 texts refused alike"):
        cohere(client).embed_texts([f"drug {i}" for i in range(4)])


def test_every_request_and_every_half_passes_the_limiter_with_its_own_texts(client) -> None:
    texts = [f"drug {i}" for i in range(4)]
    fake = FakeCohere(client, bad={"drug 3"})
    embedder = cohere(client)
    embedder.limiter = limiter = RecordingLimiter()

    with pytest.raises(RejectedTexts):
        embedder.embed_texts(texts)

    assert limiter.admitted == [(1, estimated_tokens(request)) for request in fake.requests]
    assert len(fake.requests) == 5  # [0..3] refused, [0,1] ok, [2,3] refused, [2] ok, [3] refused


def test_concurrent_requests_keep_each_vector_with_its_text(client) -> None:
    texts = [f"drug {i}" for i in range(500)]
    FakeCohere(client, bad=set())

    vectors = cohere(client, concurrency=4).embed_texts(texts)

    assert vectors.shape == (500, 1024)
    assert [round(float(vector[1] / vector[0])) for vector in vectors] == list(range(500))


class RecordingLimiter:
    def __init__(self) -> None:
        self.admitted: list[tuple[int, int]] = []

    def acquire(self, requests: int, tokens: int) -> None:
        self.admitted.append((requests, tokens))
