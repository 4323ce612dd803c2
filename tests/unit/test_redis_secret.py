"""The Redis URL (and its AUTH token) from Secrets Manager: every accepted shape, every refusal."""

import json
import traceback

import boto3
import pytest
from botocore.stub import Stubber

from shared.errors import ConfigError, UnavailableError
from shared.redact import redact_known
from shared.secrets import redis_url_from_secret
from shared.settings import Settings
from shared.wiring import redis_url

pytestmark = pytest.mark.usefixtures("no_known_secrets")

TOKEN = "t0k/en@with#odd:chars%"
ENCODED = "t0k%2Fen%40with%23odd%3Achars%25"


def _secret(client, value: str) -> str:
    return str(client.create_secret(Name="redis", SecretString=value)["ARN"])


@pytest.mark.parametrize(
    ("stored", "url"),
    [
        ("rediss://:tok@cache.example:6379/0", "rediss://:tok@cache.example:6379/0"),
        ("  redis://cache:6379/2\n", "redis://cache:6379/2"),
        (json.dumps({"url": "rediss://user:pw@cache:6380/0"}), "rediss://user:pw@cache:6380/0"),
        (json.dumps({"host": "cache.example"}), "rediss://cache.example:6379/0"),
        (
            json.dumps({"host": "cache", "port": 6380, "auth_token": TOKEN}),
            f"rediss://:{ENCODED}@cache:6380/0",
        ),
        (
            json.dumps({"host": "cache", "username": "sync", "password": TOKEN, "tls": False, "db": 3}),
            f"redis://sync:{ENCODED}@cache:6379/3",
        ),
        (json.dumps({"host": "::1", "port": "6379", "tls": False}), "redis://[::1]:6379/0"),
    ],
    ids=["url", "url-padded", "json-url", "host-only-tls", "auth-token", "acl-user-no-tls", "ipv6"],
)
def test_each_documented_shape_becomes_a_url(secrets, stored: str, url: str) -> None:
    assert redis_url_from_secret(secrets, _secret(secrets, stored)) == url


def test_the_token_is_known_to_the_redaction_before_any_connection(secrets) -> None:
    # GIVEN a secret holding an AUTH token that URL-encoding changes
    arn = _secret(secrets, json.dumps({"host": "cache", "auth_token": TOKEN}))

    # WHEN the URL is read
    redis_url_from_secret(secrets, arn)

    # THEN any later error text quoting the token, raw or encoded, is masked
    assert (
        redact_known(f"AUTH {TOKEN} failed; url rediss://:{ENCODED}@cache")
        == "AUTH *** failed; url rediss://:***@cache"
    )


@pytest.mark.parametrize(
    ("stored", "problem"),
    [
        (TOKEN, "is not a redis:// or rediss:// URL"),  # a bare token
        (f"https://:{TOKEN}@cache", "is not a redis:// or rediss:// URL"),
        (json.dumps({"url": 6379, "password": TOKEN}), "is not a redis:// or rediss:// URL"),
        (json.dumps({"endpoint": "cache", "password": TOKEN}), "is not a redis:// or rediss:// URL"),
        (json.dumps([TOKEN]), "is not a redis:// or rediss:// URL"),
        ('{"host": "cache", "password": "' + TOKEN, "is not valid JSON"),
        (json.dumps({"host": "cache", "password": TOKEN, "tls": "no"}), "tls must be true or false"),
        (json.dumps({"host": "cache", "password": TOKEN, "port": "x"}), "port must be an integer"),
        (json.dumps({"host": "cache", "password": TOKEN, "port": 0}), "port must be an integer"),
        (json.dumps({"host": "cache", "password": TOKEN, "db": -1}), "db must be a non-negative integer"),
        (json.dumps({"host": "cache", "password": 97531975}), "must be strings"),
    ],
    ids=["bare-token", "https", "url-not-string", "no-host", "list", "broken-json", "tls", "port", "port-0",
         "db", "password-not-string"],
)  # fmt: skip
def test_other_shapes_are_refused_without_quoting_the_secret(secrets, stored: str, problem: str) -> None:
    arn = _secret(secrets, stored)
    with pytest.raises(ConfigError, match=problem) as refused:
        redis_url_from_secret(secrets, arn)
    shown = "".join(traceback.format_exception(refused.value))
    assert arn in str(refused.value)
    assert TOKEN not in shown
    assert "97531975" not in shown
    assert "t0k" not in shown, shown


def test_a_missing_secret_is_a_config_error(secrets) -> None:
    with pytest.raises(ConfigError, match=r"Redis secret .*ResourceNotFoundException"):
        redis_url_from_secret(secrets, "arn:aws:secretsmanager:us-east-1:975319759012:secret:nope")


@pytest.mark.parametrize(
    ("code", "error"),
    [("AccessDeniedException", ConfigError), ("InternalServiceError", UnavailableError)],
)
def test_denied_is_config_and_an_outage_is_retryable(code: str, error: type[Exception]) -> None:
    client = boto3.client(
        "secretsmanager", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stubber:
        stubber.add_client_error("get_secret_value", service_error_code=code)
        with pytest.raises(error, match=code):
            redis_url_from_secret(client, "arn:aws:secretsmanager:us-east-1:1:secret:r")


def test_settings_read_the_secret_when_no_redis_url_is_set(secrets, monkeypatch) -> None:
    # GIVEN a deployed function's environment: a secret ARN, no REDIS_URL
    arn = _secret(secrets, json.dumps({"host": "cache", "auth_token": "tok"}))
    for name in ("REDIS_URL", "DRUGSYNC_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("DRUGSYNC_REDIS_SECRET_ARN", arn)

    # WHEN the store's URL is resolved THEN it comes from the secret
    assert redis_url(Settings()) == "rediss://:tok@cache:6379/0"


def test_a_redis_url_still_wins_for_the_local_stack(monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("DRUGSYNC_REDIS_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:1:secret:never-read")
    assert redis_url(Settings()) == "redis://127.0.0.1:6379/0"


def test_neither_is_a_config_error_naming_both(monkeypatch) -> None:
    for name in ("REDIS_URL", "DRUGSYNC_REDIS_URL", "DRUGSYNC_REDIS_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"REDIS_URL.*DRUGSYNC_REDIS_SECRET_ARN"):
        redis_url(Settings())
