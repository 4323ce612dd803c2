"""Connection settings from AWS Secrets Manager: the database (RDS secret shape) and Redis."""

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import ConfigError, UnavailableError
from shared.redact import remember_secrets

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

_REQUIRED_KEYS = ("host", "username", "password")
# Codes that retrying will not fix: the ARN, the permissions or the secret's state are wrong.
_CONFIG_CODES = ("ResourceNotFoundException", "AccessDeniedException", "InvalidRequestException")
_REDIS_SCHEMES = ("redis://", "rediss://")
_REDIS_SHAPES = (
    'a redis:// or rediss:// URL, JSON {"url": ...}, or JSON {"host", "port", "username", "password"'
    ' or "auth_token", "tls", "db"}'
)


# libpq's word for the operating system's trust store (libpq 16 and later).
SYSTEM_TRUST_STORE = "system"


def read_secret(client: "SecretsManagerClient", secret_arn: str, what: str) -> str:
    """The secret's string; a wrong ARN or missing permission is a ConfigError, an outage Unavailable."""
    try:
        return client.get_secret_value(SecretId=secret_arn)["SecretString"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in _CONFIG_CODES:
            raise ConfigError(f"{what} secret {secret_arn}: {code}") from error
        raise UnavailableError(f"{what} secret {secret_arn}: {code}") from error
    except BotoCoreError as error:
        raise UnavailableError(f"{what} secret {secret_arn}: {error}") from error
    except KeyError:
        raise ConfigError(f"{what} secret {secret_arn} holds binary data, not a string") from None


def database_url_from_secret(
    client: "SecretsManagerClient", secret_arn: str, ca_bundle: str = SYSTEM_TRUST_STORE
) -> str:
    """A postgresql:// URL built from an RDS-style secret {host, port, username, password, dbname}.

    TLS with verify-full: the server's certificate must chain to `ca_bundle` and name the host,
    so a man in the middle cannot pose as the database (sslmode=require checks neither).
    https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION
    The host is percent-encoded, so a unix-socket directory works too (libpq reads a host that
    starts with '/' as one, and ignores sslmode there: checked with libpq 18).
    https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING-URIS
    """
    fields = _json_object(read_secret(client, secret_arn, "database"), f"database secret {secret_arn}")
    if fields is None:
        raise ConfigError(f"database secret {secret_arn} is not a JSON object")
    missing = [key for key in _REQUIRED_KEYS if not fields.get(key)]
    if missing:
        raise ConfigError(f"database secret {secret_arn} lacks {', '.join(missing)}")
    user = quote(str(fields["username"]), safe="")
    password = quote(str(fields["password"]), safe="")
    host = quote(str(fields["host"]), safe="")
    port = _port(fields.get("port", 5432), f"database secret {secret_arn}")
    dbname = quote(str(fields.get("dbname", "postgres")), safe="")
    tls = f"sslmode=verify-full&sslrootcert={quote(ca_bundle, safe='/')}"
    url = f"postgresql://{user}:{password}@{host}:{port}/{dbname}?{tls}"
    remember_secrets(url)
    return url


def redis_url_from_secret(client: "SecretsManagerClient", secret_arn: str) -> str:
    """A redis:// or rediss:// URL from a secret holding a URL, {"url": ...} or {host, port, ...}.

    The fields form defaults to TLS (rediss://): ElastiCache and MemoryDB with in-transit
    encryption require it, and an AUTH token must not cross the network in clear.
    No message quotes the secret's content.
    """
    what = f"Redis secret {secret_arn}"
    secret = read_secret(client, secret_arn, "Redis").strip()
    fields = _json_object(secret, what) if secret.startswith("{") else None
    if fields is None:
        url = secret
    elif "url" in fields:
        url = fields["url"] if isinstance(fields["url"], str) else ""
    elif fields.get("host"):
        url = _redis_url_from_fields(fields, what)
    else:
        url = ""
    remember_secrets(url)
    if not url.startswith(_REDIS_SCHEMES):
        raise ConfigError(f"{what} is not {_REDIS_SHAPES}")
    return url


def _redis_url_from_fields(fields: dict[str, Any], what: str) -> str:
    tls = fields.get("tls", True)
    if not isinstance(tls, bool):
        raise ConfigError(f"{what}: tls must be true or false")
    password = fields.get("password") or fields.get("auth_token") or ""
    username = fields.get("username") or ""
    if not all(isinstance(value, str) for value in (password, username, fields["host"])):
        raise ConfigError(f"{what}: host, username, password and auth_token must be strings")
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}@" if password or username else ""
    host = fields["host"]
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 literal
    db = fields.get("db", 0)
    if not isinstance(db, int) or isinstance(db, bool) or db < 0:
        raise ConfigError(f"{what}: db must be a non-negative integer")
    port = _port(fields.get("port", 6379), what)
    return f"{'rediss' if tls else 'redis'}://{userinfo}{host}:{port}/{db}"


def _json_object(text: str, what: str) -> dict[str, Any] | None:
    """The secret as a JSON object, None when it is not one; the parse error is dropped (it quotes)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        if text.lstrip().startswith("{"):
            raise ConfigError(f"{what} starts like JSON but is not valid JSON") from None
        return None
    return value if isinstance(value, dict) else None


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 1 <= port <= 65535 or isinstance(value, bool):
        raise ConfigError(f"{what}: port must be an integer from 1 to 65535")
    return port
