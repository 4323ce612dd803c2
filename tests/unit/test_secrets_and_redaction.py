import json
import traceback
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from shared.errors import ConfigError, UnavailableError
from shared.postgres import Database, connect, translate_errors
from shared.redact import redact_url
from shared.redis_store import RedisDocumentStore, connect_redis
from shared.secrets import database_url_from_secret
from shared.settings import Settings
from shared.wiring import database_url

pytestmark = pytest.mark.usefixtures("no_known_secrets")

# Every character a URL or libpq treats specially: '@' ':' '/' '?' '=' '&' '#' '%' ' ' quotes.
PASSWORD = "p@ss:w/rd?x=1&y#z%20 'q\""
LIBPQ_QUOTED = "'" + PASSWORD.replace("\\", "\\\\").replace("'", "\\'") + "'"
CLOSED = "127.0.0.1:1"  # nothing listens on port 1: a real, fast connection failure


def _assert_no_password(error: BaseException) -> None:
    """Neither the message nor the traceback with its chained causes holds the password, whole or in part."""
    text = "".join(traceback.format_exception(error))
    pieces = [PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD), LIBPQ_QUOTED, *PASSWORD.split(" ")]
    leaked = [piece for piece in pieces if piece in text]
    assert not leaked, text


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
        "postgresql://sync:p%40ss%2Fword@aurora.example:5432/rx?sslmode=verify-full&sslrootcert=system"
    )


def test_the_secret_url_verifies_the_server_against_the_configured_bundle(secrets, monkeypatch) -> None:
    # GIVEN an RDS secret, and the Amazon RDS global bundle configured as what verifies the server
    fields = {"host": "aurora.example", "username": "sync", "password": PASSWORD, "dbname": "rx"}
    arn = secrets.create_secret(Name="db", SecretString=json.dumps(fields))["ARN"]
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("DRUGSYNC_DATABASE_SECRET_ARN", arn)
    monkeypatch.setenv("DRUGSYNC_DATABASE_CA_BUNDLE", "/var/task/certs/rds global-bundle.pem")

    # WHEN the settings give the database URL
    url = database_url(Settings())

    # THEN libpq reads verify-full against that bundle, and the password intact
    parsed = conninfo_to_dict(url)
    assert parsed["sslmode"] == "verify-full"
    assert parsed["sslrootcert"] == "/var/task/certs/rds global-bundle.pem"
    assert (parsed["password"], parsed["host"], parsed["dbname"]) == (PASSWORD, "aurora.example", "rx")


def test_a_socket_directory_host_survives_the_url(secrets) -> None:
    # GIVEN an RDS-shaped secret whose host is a unix-socket directory (the local pgserver)
    fields = {"host": "/tmp/pg data/run", "port": 5433, "username": "postgres", "password": "unused"}
    arn = secrets.create_secret(Name="db", SecretString=json.dumps(fields))["ARN"]

    # WHEN it becomes a URL
    parsed = conninfo_to_dict(database_url_from_secret(secrets, arn))

    # THEN libpq reads the whole directory as the host, and verify-full stays (ignored on a socket)
    assert (parsed["host"], parsed["port"], parsed["sslmode"]) == ("/tmp/pg data/run", "5433", "verify-full")


def test_a_secret_that_is_not_json_is_refused_without_quoting_it(secrets) -> None:
    arn = secrets.create_secret(Name="db", SecretString='{"password": "' + PASSWORD)["ARN"]
    with pytest.raises(ConfigError, match="not valid JSON") as refused:
        database_url_from_secret(secrets, arn)
    _assert_no_password(refused.value)


def test_the_os_trust_store_is_the_default_bundle(monkeypatch) -> None:
    monkeypatch.delenv("DRUGSYNC_DATABASE_CA_BUNDLE", raising=False)
    assert Settings().database_ca_bundle == "system"


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


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        (f"postgresql://u:{quote(PASSWORD, safe='')}@db/x", "postgresql://u:***@db/x"),
        (f"postgresql://u:{PASSWORD}@db/x", "postgresql://u:***@db/x"),  # pasted without encoding
        (
            f"postgresql://u@db/x?sslmode=require&password={quote(PASSWORD, safe='')}",
            "postgresql://u@db/x?sslmode=require&password=***",
        ),
        (f"postgres://u@db/x?PassWord={quote_plus(PASSWORD)}&a=1", "postgres://u@db/x?PassWord=***&a=1"),
        (f"postgresql://u@db/x?password={quote(PASSWORD, safe=':/@')}", "postgresql://u@db/x?password=***"),
        (f"host=db password={LIBPQ_QUOTED} dbname=x", "host=db password=*** dbname=x"),
        ("host=db password=hunter2 dbname=x", "host=db password=*** dbname=x"),
        ("host=db PASSWORD = 'se cret", "host=db PASSWORD = ***"),  # unterminated quote
    ],
)
def test_every_form_of_connection_string_is_redacted(dsn: str, redacted: str) -> None:
    assert redact_url(dsn) == redacted


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://u:{quote(PASSWORD, safe='')}@{CLOSED}/x?connect_timeout=1",
        f"postgresql://u@{CLOSED}/x?connect_timeout=1&password={quote(PASSWORD, safe='')}",
        f"host=127.0.0.1 port=1 connect_timeout=1 password={LIBPQ_QUOTED}",
    ],
    ids=["url-userinfo", "url-query", "keyword-quoted"],
)
def test_a_refused_connection_never_shows_the_password(dsn: str) -> None:
    with pytest.raises(UnavailableError, match="Connection refused") as caught:
        connect(dsn)
    _assert_no_password(caught.value)


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=127.0.0.1 port=1 password={PASSWORD}",  # unquoted: libpq quotes the tail it chokes on
        f"postgresql://u:{PASSWORD}@{CLOSED}/x",  # not URL-encoded
        f"postgresql://u@{CLOSED}/x?PassWord={quote(PASSWORD, safe='')}",  # keywords are case-sensitive
        f"postgresql://u:%zz{quote(PASSWORD, safe='')}@{CLOSED}/x",  # a bad %-escape quotes the token
        f"postgresql://u@{CLOSED}/x?{quote(PASSWORD, safe='')}",
    ],
    ids=["keyword-unquoted", "url-raw", "query-case", "bad-escape", "query-no-equals"],
)
def test_a_malformed_connection_string_is_a_config_error_without_the_password(dsn: str) -> None:
    with pytest.raises(ConfigError, match="malformed database connection string") as caught:
        connect(dsn)
    _assert_no_password(caught.value)


@pytest.mark.parametrize("password", [PASSWORD, "o'neil\\x"])
def test_a_postgres_error_quoting_the_password_is_redacted(password: str) -> None:
    # GIVEN a process whose database is configured with the password, and an error that quotes it
    Database(f"postgresql://u:{quote(password, safe='')}@db/x")
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    leaky = psycopg.OperationalError(f"connection lost; conninfo: password={quoted} host=db")

    # WHEN the adapter translates it
    with pytest.raises(UnavailableError, match="while reading") as caught, translate_errors("reading"):
        raise leaky

    # THEN neither the message nor the chained cause shows it
    _assert_no_password(caught.value)
    assert password not in "".join(traceback.format_exception(caught.value))
    assert "password=*** host=db" in str(caught.value)


def test_an_error_without_the_password_keeps_its_cause() -> None:
    cause = psycopg.OperationalError("server closed the connection unexpectedly")
    with pytest.raises(UnavailableError) as caught, translate_errors("reading"):
        raise cause
    assert caught.value.__cause__ is cause


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


def test_a_raw_at_in_a_database_password_is_refused_before_libpq_can_quote_a_piece_of_it() -> None:
    with pytest.raises(ConfigError, match="percent-encode it as %40") as refused:
        connect("postgresql://u:Sec@ret9@127.0.0.1:1/db")
    assert "ret9" not in str(refused.value)
    assert "Sec" not in str(refused.value)


@pytest.mark.parametrize("password", ["Pa#ss9w", "Pa/ss9w", "Pa?ss9w"])
def test_a_redis_url_redis_py_cannot_read_is_refused_without_its_text(password: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL") as refused:
        connect_redis(f"redis://:{password}@127.0.0.1:6379/0")
    assert "Pa" not in str(refused.value)
    assert refused.value.__cause__ is None
