"""Database credentials from AWS Secrets Manager (the RDS secret JSON shape)."""

import json
from typing import TYPE_CHECKING
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import ConfigError, UnavailableError

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

_REQUIRED_KEYS = ("host", "username", "password")


# libpq's word for the operating system's trust store (libpq 16 and later).
SYSTEM_TRUST_STORE = "system"


def database_url_from_secret(
    client: "SecretsManagerClient", secret_arn: str, ca_bundle: str = SYSTEM_TRUST_STORE
) -> str:
    """A postgresql:// URL built from an RDS-style secret {host, port, username, password, dbname}.

    TLS with verify-full: the server's certificate must chain to `ca_bundle` and name the host,
    so a man in the middle cannot pose as the database (sslmode=require checks neither).
    https://www.postgresql.org/docs/current/libpq-ssl.html#LIBPQ-SSL-PROTECTION
    """
    try:
        secret = client.get_secret_value(SecretId=secret_arn)["SecretString"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in (
            "ResourceNotFoundException",
            "AccessDeniedException",
            "InvalidRequestException",
        ):
            raise ConfigError(f"database secret {secret_arn}: {code}") from error
        raise UnavailableError(f"database secret {secret_arn}: {code}") from error
    except BotoCoreError as error:
        raise UnavailableError(f"database secret {secret_arn}: {error}") from error
    try:
        fields = json.loads(secret)
    except json.JSONDecodeError as error:
        raise ConfigError(f"database secret {secret_arn} is not JSON") from error
    missing = [key for key in _REQUIRED_KEYS if not fields.get(key)]
    if missing:
        raise ConfigError(f"database secret {secret_arn} lacks {', '.join(missing)}")
    user = quote(str(fields["username"]), safe="")
    password = quote(str(fields["password"]), safe="")
    port = int(fields.get("port", 5432))
    dbname = quote(str(fields.get("dbname", "postgres")), safe="")
    tls = f"sslmode=verify-full&sslrootcert={quote(ca_bundle, safe='/')}"
    return f"postgresql://{user}:{password}@{fields['host']}:{port}/{dbname}?{tls}"
