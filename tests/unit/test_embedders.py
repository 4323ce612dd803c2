import io
import json

import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from shared.embedders.bedrock import TitanEmbedder
from shared.embedders.hashing import HashingEmbedder, tokenize
from shared.errors import EmbeddingError, UnavailableError

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


def _titan_response(vector: list[float]) -> dict[str, object]:
    payload = json.dumps({"embedding": vector, "inputTextTokenCount": 3}).encode()
    return {"body": StreamingBody(io.BytesIO(payload), len(payload)), "contentType": "application/json"}


@pytest.fixture
def bedrock():
    import boto3

    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stubber:
        yield client, stubber


def test_titan_sends_each_text_with_dimensions_and_normalisation(bedrock) -> None:
    client, stubber = bedrock
    for text, value in (("first", 1.0), ("second", 2.0)):
        body = json.dumps({"inputText": text, "dimensions": 256, "normalize": True})
        stubber.add_response(
            "invoke_model",
            _titan_response([value] * 256),
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
    stubber.add_response("invoke_model", _titan_response([0.5] * 512))
    embedder = TitanEmbedder(client, "amazon.titan-embed-text-v2:0", 256, batch_size=16, concurrency=1)
    with pytest.raises(EmbeddingError, match="shape"):
        embedder.embed_texts(["text"])
