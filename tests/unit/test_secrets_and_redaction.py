import json

import boto3
import pytest
from moto import mock_aws

from shared.errors import ConfigError, UnavailableError
from shared.postgres import connect
from shared.redact import redact_url
from shared.redis_store import RedisDocumentStore, connect_redis
from shared.secrets import database_url_from_secret


@pytest.fixture
def secrets():
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")


def test_rds_secret_becomes_a_tls_url(secrets) -> None:
    arn = secrets.create_secret(
        Name="db",
        SecretString=json.dumps(
            {
                "host": "aurora.example",
                "port": 5432,
                "username": "sync",
                "password": "p@ss/word",
                "dbname": "rx",
            }
        ),
    )["ARN"]
    assert database_url_from_secret(secrets, arn) == (
        "postgresql://sync:p%40ss%2Fword@aurora.example:5432/rx?sslmode=require"
    )


def test_a_secret_without_a_password_names_what_is_missing(secrets) -> None:
    arn = secrets.create_secret(Name="db", SecretString=json.dumps({"host": "h", "username": "u"}))["ARN"]
    with pytest.raises(ConfigError, match="lacks password"):
        database_url_from_secret(secrets, arn)


def test_a_missing_secret_is_a_config_error(secrets) -> None:
    with pytest.raises(ConfigError, match="ResourceNotFoundException"):
        database_url_from_secret(secrets, "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope")


def test_urls_are_redacted() -> None:
    assert redact_url("postgresql://u:hunter2@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_a_failed_connection_never_shows_the_password() -> None:
    with pytest.raises(UnavailableError) as caught:
        connect("postgresql://u:hunter2@127.0.0.1:1/x?connect_timeout=1")
    assert "hunter2" not in str(caught.value)
    assert "u:***@127.0.0.1:1" in str(caught.value)


def test_rediss_urls_connect_over_tls() -> None:
    client = connect_redis("rediss://:hunter2@cache.example:6380/0")
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_redis_errors_never_show_the_password() -> None:
    store = RedisDocumentStore(connect_redis("redis://:hunter2@127.0.0.1:1/0"), "drug:", "idx")
    with pytest.raises(UnavailableError) as caught:
        store.count_documents()
    assert "hunter2" not in str(caught.value)
