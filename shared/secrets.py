"""Database credentials from AWS Secrets Manager (the RDS secret JSON shape)."""

import json
from typing import TYPE_CHECKING
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import ConfigError, UnavailableError

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

_REQUIRED_KEYS = ("host", "username", "password")


def database_url_from_secret(client: "SecretsManagerClient", secret_arn: str) -> str:
    """A postgresql:// URL built from an RDS-style secret {host, port, username, password, dbname}."""
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
    return f"postgresql://{user}:{password}@{fields['host']}:{port}/{dbname}?sslmode=require"
