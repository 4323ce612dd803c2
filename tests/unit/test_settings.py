import pytest
from pydantic import ValidationError

from shared.errors import ConfigError
from shared.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def _fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_conventional_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("REDIS_URL", "rediss://cache:6380/0")
    monkeypatch.setenv("DRUGSYNC_RANGE_SIZE", "250")
    settings = get_settings()
    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://u:hunter2@db/x"
    assert "hunter2" not in repr(settings)
    assert settings.range_size == 250


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DRUGSYNC_TABLE", "drugs; DROP TABLE drugs", "DRUGSYNC_TABLE"),
        ("DRUGSYNC_TABLE", "a.b.c", "DRUGSYNC_TABLE"),
        ("DRUGSYNC_ID_COLUMN", "id)--", "DRUGSYNC_ID_COLUMN"),
        ("DRUGSYNC_RANGE_SIZE", "0", "DRUGSYNC_RANGE_SIZE"),
        ("DRUGSYNC_EMBEDDER", "word2vec", "DRUGSYNC_EMBEDDER"),
        ("DRUGSYNC_KEY_PREFIX", "drug *", "DRUGSYNC_KEY_PREFIX"),
    ],
)
def test_a_wrong_setting_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=named):
        get_settings()


def test_bedrock_needs_a_titan_dimension() -> None:
    with pytest.raises(ValueError, match="titan-embed-text-v2:0 offers"):
        Settings(embedder="bedrock", embedding_dim=384)
    assert Settings(embedder="bedrock", embedding_dim=512).embedding_dim == 512


def test_schema_qualified_table() -> None:
    assert Settings(table="catalog.drugs").table_parts == ("catalog", "drugs")


def test_an_empty_quota_variable_is_no_quota_as_serverless_passes_an_unset_param(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DRUGSYNC_EMBEDDING_QUOTA_RPM", "")
    monkeypatch.setenv("DRUGSYNC_EMBEDDING_QUOTA_TPM", " ")
    settings = Settings()
    assert (settings.embedding_quota_rpm, settings.embedding_quota_tpm) == (None, None)
    monkeypatch.setenv("DRUGSYNC_EMBEDDING_QUOTA_RPM", "fifteen hundred")
    with pytest.raises(ValidationError, match="embedding_quota_rpm"):
        Settings()
