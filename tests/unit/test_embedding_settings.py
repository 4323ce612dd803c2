"""Provider, model and dimension as settings: each Bedrock model's own dimensions, clear refusals, and
the name the producer records for a generation equal to the name of the embedder the settings build."""

import boto3
import pytest
from moto import mock_aws

from shared.bedrock_models import base_model_id
from shared.embedders import build_embedder, embedder_name
from shared.embedders.openai_compat import api_key
from shared.errors import ConfigError
from shared.redact import redact_known
from shared.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def _fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("model_id", "dimension"),
    [
        ("amazon.titan-embed-text-v2:0", 256),
        ("amazon.titan-embed-text-v2:0", 1024),
        ("cohere.embed-english-v3", 1024),
        ("cohere.embed-multilingual-v3", 1024),
        ("cohere.embed-v4:0", 1536),
        ("us.cohere.embed-v4:0", 256),
        ("global.cohere.embed-v4:0", 512),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.cohere.embed-v4:0", 1024),
        ("arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-english-v3", 1024),
    ],
)
def test_each_bedrock_model_takes_its_own_dimensions(model_id: str, dimension: int) -> None:
    settings = Settings(embedder="bedrock", bedrock_model_id=model_id, embedding_dim=dimension)
    assert settings.embedding_dim == dimension


@pytest.mark.parametrize(
    ("model_id", "dimension", "allowed"),
    [
        ("amazon.titan-embed-text-v2:0", 384, "one of 256, 512, 1024"),
        ("amazon.titan-embed-text-v2:0", 1536, "one of 256, 512, 1024"),
        ("cohere.embed-english-v3", 512, "one of 1024)"),
        ("us.cohere.embed-v4:0", 384, "one of 256, 512, 1024, 1536"),
    ],
)
def test_a_dimension_the_model_does_not_offer_is_refused_naming_those_it_does(
    monkeypatch: pytest.MonkeyPatch, model_id: str, dimension: int, allowed: str
) -> None:
    monkeypatch.setenv("DRUGSYNC_EMBEDDER", "bedrock")
    monkeypatch.setenv("DRUGSYNC_BEDROCK_MODEL_ID", model_id)
    monkeypatch.setenv("DRUGSYNC_EMBEDDING_DIM", str(dimension))

    with pytest.raises(ConfigError) as raised:
        get_settings()

    message = str(raised.value)
    assert f"DRUGSYNC_EMBEDDING_DIM {dimension}" in message
    assert base_model_id(model_id) in message
    assert allowed in message


@pytest.mark.parametrize(
    "model_id",
    [
        "cohere.embed-english-v2",
        "amazon.titan-embed-text-v1",
        "arn:aws:bedrock:us-east-1:1:provisioned-model/abc",
    ],
)
def test_a_model_drugsync_does_not_know_is_refused_naming_the_known_ones(
    monkeypatch: pytest.MonkeyPatch, model_id: str
) -> None:
    monkeypatch.setenv("DRUGSYNC_EMBEDDER", "bedrock")
    monkeypatch.setenv("DRUGSYNC_BEDROCK_MODEL_ID", model_id)
    monkeypatch.setenv("DRUGSYNC_EMBEDDING_DIM", "1024")

    with pytest.raises(ConfigError, match="DRUGSYNC_BEDROCK_MODEL_ID") as raised:
        get_settings()

    assert "cohere.embed-v4:0" in str(raised.value)
    assert "amazon.titan-embed-text-v2:0" in str(raised.value)


def test_the_bedrock_model_is_not_checked_for_another_embedder() -> None:
    assert Settings(embedder="hashing", bedrock_model_id="anything", embedding_dim=384).embedding_dim == 384


def test_the_openai_embedder_needs_a_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRUGSYNC_EMBEDDER", "openai")
    with pytest.raises(ConfigError, match="DRUGSYNC_OPENAI_BASE_URL"):
        get_settings()


def test_the_openai_base_url_must_be_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRUGSYNC_EMBEDDER", "openai")
    monkeypatch.setenv("DRUGSYNC_OPENAI_BASE_URL", "file:///etc/passwd")
    with pytest.raises(ConfigError, match="DRUGSYNC_OPENAI_BASE_URL"):
        get_settings()


def test_the_openai_api_key_never_shows_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRUGSYNC_EMBEDDER", "openai")
    monkeypatch.setenv("DRUGSYNC_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("DRUGSYNC_OPENAI_API_KEY", "sk-hunter2")
    settings = get_settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-hunter2"
    assert "sk-hunter2" not in repr(settings)
    assert "sk-hunter2" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("values", "expected_name", "kind"),
    [
        ({"embedder": "hashing", "embedding_dim": 384}, "hashing-v1-384", "HashingEmbedder"),
        ({"embedder": "simulated", "embedding_dim": 64}, "simulated-api-64", "SimulatedApiEmbedder"),
        (
            {"embedder": "bedrock", "embedding_dim": 512},
            "amazon.titan-embed-text-v2:0-512",
            "TitanEmbedder",
        ),
        (
            {
                "embedder": "bedrock",
                "bedrock_model_id": "cohere.embed-multilingual-v3",
                "embedding_dim": 1024,
            },
            "cohere.embed-multilingual-v3-1024",
            "CohereEmbedder",
        ),
        (
            {"embedder": "bedrock", "bedrock_model_id": "us.cohere.embed-v4:0", "embedding_dim": 256},
            "cohere.embed-v4:0-256",
            "CohereEmbedder",
        ),
        (
            {"embedder": "openai", "openai_base_url": "http://127.0.0.1:9/v1", "embedding_dim": 1536},
            "openai:text-embedding-3-small-1536",
            "OpenAICompatibleEmbedder",
        ),
    ],
)
def test_the_recorded_name_is_the_built_embedders_name(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, object], expected_name: str, kind: str
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # building a boto3 client sends nothing
    settings = Settings.model_validate(values)

    embedder = build_embedder(settings)

    assert type(embedder).__name__ == kind
    assert embedder_name(settings) == embedder.name == expected_name
    assert embedder.dimension == settings.embedding_dim


def test_a_cohere_model_reached_by_profile_or_directly_is_one_generation() -> None:
    direct = Settings(embedder="bedrock", bedrock_model_id="cohere.embed-v4:0", embedding_dim=1024)
    profile = direct.model_copy(update={"bedrock_model_id": "eu.cohere.embed-v4:0"})
    other_dimension = direct.model_copy(update={"embedding_dim": 512})
    assert embedder_name(direct) == embedder_name(profile)
    assert embedder_name(direct) != embedder_name(other_dimension)


@pytest.mark.parametrize(
    ("secret", "key"),
    [("sk-plain-123", "sk-plain-123"), ('{"api_key": "sk-json-456"}', "sk-json-456")],
    ids=["the key itself", "JSON"],
)
def test_the_openai_api_key_is_read_from_its_secret(
    monkeypatch: pytest.MonkeyPatch, secret: str, key: str
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="drugsync-openai", SecretString=secret)["ARN"]
        settings = Settings(
            embedder="openai", openai_base_url="http://127.0.0.1:9/v1", openai_api_key_secret_arn=arn
        )

        assert api_key(settings) == key
        assert "sk-" not in redact_known(f"refused {key}")


def test_an_openai_key_secret_of_another_shape_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(Name="k", SecretString='{"key": "sk-1"}')["ARN"]
        settings = Settings(
            embedder="openai", openai_base_url="http://127.0.0.1:9/v1", openai_api_key_secret_arn=arn
        )

        with pytest.raises(ConfigError, match='neither a key nor JSON with a string "api_key"'):
            api_key(settings)
