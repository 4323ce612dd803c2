import hashlib
import json

import numpy as np
import pytest

from shared.embedders.base import BatchingEmbedder, estimated_tokens
from shared.embedders.bedrock import TitanEmbedder
from shared.embedders.hashing import HashingEmbedder, tokenize
from shared.embedders.simulated import SimulatedApiEmbedder
from shared.errors import (
    DrugSyncError,
    EmbeddingError,
    ProviderError,
    RejectedTexts,
    ThrottledError,
    UnavailableError,
)
from shared.ports import Vectors
from tests.factories import TITAN, TOO_LONG, count_requests, refuse, titan_response

CATALOG = [
    "Amoxicillin 500 mg capsule. amoxicillin. Amoxil. 500 mg. capsule. oral. by Teva",
    "Amoxicillin 875 mg tablet. amoxicillin. Amoxil. 875 mg. tablet. oral. by Sandoz",
    "Cephalexin 500 mg capsule. cephalexin. Keflex. 500 mg. capsule. oral. by Teva",
    "Omeprazole 20 mg delayed-release capsule. omeprazole. Prilosec. 20 mg. oral. by Mylan",
    "Lisinopril 10 mg tablet. lisinopril. Zestril. 10 mg. tablet. oral. by Lupin",
]


def test_hashing_is_deterministic_normalised_and_shaped() -> None:
    embedder = HashingEmbedder(384, batch_size=2)
    first = embedder.embed_texts(CATALOG)
    second = HashingEmbedder(384, batch_size=50).embed_texts(CATALOG)
    assert first.shape == (5, 384)
    assert first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first, second)
    assert embedder.calls == 3  # 5 texts in batches of 2: never one call per text


# The vectors of CATALOG as hashing-v1 has always made them (rounded to 4 decimals, so a last-ulp
# difference between CPUs does not matter). The embedder's name is in every stored fingerprint and
# search embeds queries with today's code: under the same name, the vectors must never change.
HASHING_V1_CATALOG_SHA256 = "3b20faaa45c386e336303a293e1983bbed3613663b295d3b336c6d2b516aadb2"


def test_hashing_v1_makes_the_vectors_it_always_made() -> None:
    vectors = HashingEmbedder(384, batch_size=2).embed_texts(CATALOG)
    rounded = np.round(vectors.astype(np.float64), 4)
    assert hashlib.sha256(rounded.tobytes()).hexdigest() == HASHING_V1_CATALOG_SHA256


def test_hashing_ranks_the_drug_searched_for_first() -> None:
    embedder = HashingEmbedder(384, batch_size=64)
    documents = embedder.embed_texts(CATALOG)
    query = embedder.embed_texts(["amoxicillin 500 mg capsule"])[0]
    ranking = np.argsort(-(documents @ query))
    assert ranking[0] == 0  # the amoxicillin capsule
    assert ranking[-1] == 4  # the lisinopril tablet shares nothing but "tablet" and "oral"


def test_tokenize_splits_numbers_from_units_and_drops_stopwords() -> None:
    assert tokenize("Amoxicillin 500mg for the ear") == ["amoxicillin", "500", "mg", "ear"]


def test_empty_input_gives_an_empty_matrix() -> None:
    assert HashingEmbedder(16, 4).embed_texts([]).shape == (0, 16)


def titan(client, batch_size: int = 256) -> TitanEmbedder:
    # One worker: the Stubber answers requests in the order they are sent.
    return TitanEmbedder(client, TITAN, 256, batch_size=batch_size, concurrency=1)


def test_titan_sends_each_text_with_dimensions_and_normalisation(bedrock) -> None:
    client, stubber = bedrock
    for text, value in (("first", 1.0), ("second", 2.0)):
        body = json.dumps({"inputText": text, "dimensions": 256, "normalize": True})
        stubber.add_response(
            "invoke_model",
            titan_response([value] * 256),
            {
                "modelId": "amazon.titan-embed-text-v2:0",
                "body": body,
                "contentType": "application/json",
                "accept": "application/json",
            },
        )
    embedder = TitanEmbedder(client, "amazon.titan-embed-text-v2:0", 256, batch_size=16, concurrency=1)
    vectors = embedder.embed_texts(["first", "second"])
    assert vectors.shape == (2, 256)
    assert vectors[0, 0] == 1.0
    assert vectors[1, 0] == 2.0
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ThrottlingException", UnavailableError),
        ("ServiceUnavailableException", UnavailableError),
        ("ValidationException", EmbeddingError),
    ],
)
def test_titan_errors_say_whether_to_retry(bedrock, code: str, expected: type[Exception]) -> None:
    client, stubber = bedrock
    stubber.add_client_error("invoke_model", service_error_code=code, http_status_code=400)
    embedder = TitanEmbedder(client, "amazon.titan-embed-text-v2:0", 256, batch_size=16, concurrency=1)
    with pytest.raises(expected, match=code):
        embedder.embed_texts(["text"])


def test_titan_wrong_dimension_is_an_embedding_error(bedrock) -> None:
    client, stubber = bedrock
    stubber.add_response("invoke_model", titan_response([0.5] * 512))
    embedder = TitanEmbedder(client, "amazon.titan-embed-text-v2:0", 256, batch_size=16, concurrency=1)
    with pytest.raises(EmbeddingError, match="shape"):
        embedder.embed_texts(["text"])


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        ("AccessDeniedException", 403, "You don't have access to the model with the specified model ID.", ProviderError),
        ("ResourceNotFoundException", 404, "Could not resolve the foundation model.", ProviderError),
        ("ValidationException", 400, "The provided model identifier is invalid.", ProviderError),
        ("ValidationException", 400, f"Invocation of model ID {TITAN} with on-demand throughput isn't supported.", ProviderError),
        ("ServiceQuotaExceededException", 400, "Your account's quota is exceeded.", ProviderError),
        ("ModelNotReadyException", 429, "Model is not ready for inference.", ProviderError),
        ("ThrottlingException", 429, "Too many requests, please wait before trying again.", ThrottledError),
        ("UnrecognizedClientException", 403, "The security token included in the request is invalid.", ProviderError),
        ("TooManyRequestsException", 429, "", ThrottledError),
        ("InternalServerException", 500, "", UnavailableError),
        ("ServiceUnavailableException", 503, "", UnavailableError),
        ("BadGateway", 502, "", UnavailableError),
        ("ModelTimeoutException", 408, "", UnavailableError),
    ],
)  # fmt: skip
def test_titan_errors_of_the_account_model_or_service_are_raised_by_their_class(
    bedrock, code: str, status: int, message: str, expected: type[DrugSyncError]
) -> None:
    client, stubber = bedrock
    refuse(stubber, code, status, message)

    with pytest.raises(DrugSyncError) as raised:
        titan(client).embed_texts(["Amoxicillin 500 mg capsule"])

    assert type(raised.value) is expected
    assert code in str(raised.value)


def test_a_text_the_model_refuses_alone_is_named_with_its_error(bedrock) -> None:
    client, stubber = bedrock
    refuse(stubber, "ValidationException", 400, TOO_LONG)

    with pytest.raises(RejectedTexts) as raised:
        titan(client).embed_texts(["x" * 50_001])

    assert raised.value.vectors == {}
    assert list(raised.value.errors) == [0]
    assert "Malformed input request" in str(raised.value.errors[0])


def test_one_refused_text_among_256_costs_256_requests_and_keeps_the_other_vectors(bedrock) -> None:
    client, stubber = bedrock
    sent = count_requests(client)
    texts = [f"drug {i}" for i in range(256)]
    for i in range(256):
        if i == 77:
            refuse(stubber, "ValidationException", 400, TOO_LONG)
        else:
            stubber.add_response("invoke_model", titan_response([float(i)] * 256))

    with pytest.raises(RejectedTexts) as raised:
        titan(client).embed_texts(texts)

    assert sent == texts  # each text once, none again
    assert list(raised.value.errors) == [77]
    assert sorted(raised.value.vectors) == [i for i in range(256) if i != 77]
    assert raised.value.vectors[78][0] == 78.0  # each vector stays with its own text
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        ("AccessDeniedException", 403, "You don't have access to the model.", ProviderError),
        ("ThrottlingException", 429, "Too many requests.", ThrottledError),
    ],
)
def test_an_error_of_the_account_or_the_service_stops_the_rest_of_the_batch_unsent(
    bedrock, code: str, status: int, message: str, expected: type[DrugSyncError]
) -> None:
    client, stubber = bedrock
    sent = count_requests(client)
    stubber.add_response("invoke_model", titan_response([0.5] * 256))
    refuse(stubber, code, status, message)

    with pytest.raises(expected):
        titan(client).embed_texts([f"drug {i}" for i in range(8)])

    assert sent == ["drug 0", "drug 1"]


def test_every_text_of_a_batch_refused_alike_is_the_model_at_fault(bedrock) -> None:
    client, stubber = bedrock
    for _ in range(8):
        refuse(
            stubber,
            "ValidationException",
            400,
            "Malformed input request: #/dimensions: 100 is not a valid enum value",
        )

    with pytest.raises(ProviderError, match="all 8 texts refused alike"):
        titan(client).embed_texts([f"drug {i}" for i in range(8)])


def test_every_text_refused_for_its_own_reason_is_still_isolated(bedrock) -> None:
    client, stubber = bedrock
    for length in (50_001, 50_002):
        refuse(stubber, "ValidationException", 400, TOO_LONG.replace("50001", str(length)))

    with pytest.raises(RejectedTexts) as raised:
        titan(client).embed_texts(["long", "longer"])

    assert sorted(raised.value.errors) == [0, 1]


class RefusingEmbedder(BatchingEmbedder):
    """A one-text-per-request provider that refuses the texts it is told to, and embeds the rest."""

    def __init__(self, refused: set[str], batch_size: int) -> None:
        super().__init__(4, batch_size)
        self._refused = refused

    @property
    def name(self) -> str:
        return "refusing"

    def _embed_batch(self, texts) -> Vectors:
        vectors = {
            i: np.full(4, float(text), dtype=np.float32)
            for i, text in enumerate(texts)
            if text not in self._refused
        }
        errors = {
            i: EmbeddingError(f"refused {text}") for i, text in enumerate(texts) if text in self._refused
        }
        if errors:
            raise RejectedTexts(vectors, errors)
        return np.asarray(list(vectors.values()), dtype=np.float32)


def test_refused_texts_are_named_by_their_place_in_the_whole_call_across_batches() -> None:
    embedder = RefusingEmbedder({"3", "6"}, batch_size=2)

    with pytest.raises(RejectedTexts) as raised:
        embedder.embed_texts([str(i) for i in range(8)])

    assert {i: str(error) for i, error in raised.value.errors.items()} == {3: "refused 3", 6: "refused 6"}
    assert {i: float(vector[0]) for i, vector in raised.value.vectors.items()} == {
        i: float(i) for i in (0, 1, 2, 4, 5, 7)
    }
    assert embedder.calls == 4  # every batch is embedded, even after one refused a text


class RecordingLimiter:
    """Records each admission: (requests, tokens)."""

    def __init__(self) -> None:
        self.admitted: list[tuple[int, int]] = []

    def acquire(self, requests: int, tokens: int) -> None:
        self.admitted.append((requests, tokens))


def test_titan_passes_every_request_through_the_limiter_with_its_tokens(bedrock) -> None:
    client, stubber = bedrock
    embedder = titan(client)
    embedder.limiter = limiter = RecordingLimiter()
    texts = ["aspirin 81 mg tablet", "ibuprofen"]
    for _ in texts:
        stubber.add_response("invoke_model", titan_response([1.0] * 256))
    embedder.embed_texts(texts)
    assert limiter.admitted == [(1, estimated_tokens([text])) for text in texts]


def test_the_simulated_api_sends_one_request_per_group_of_texts_each_admitted_by_the_limiter() -> None:
    simulated = SimulatedApiEmbedder(64, batch_size=10, latency_seconds=0, texts_per_request=3, concurrency=2)
    simulated.limiter = limiter = RecordingLimiter()
    texts = [f"drug {i} tablet" for i in range(10)]
    vectors = simulated.embed_texts(texts)
    assert simulated.requests == 4  # 3 + 3 + 3 + 1
    assert sorted(requests for requests, _ in limiter.admitted) == [1, 1, 1, 1]
    assert sum(tokens for _, tokens in limiter.admitted) == estimated_tokens(texts)
    np.testing.assert_array_equal(vectors, HashingEmbedder(64, 10).embed_texts(texts))
    assert simulated.texts_per_request == 3
