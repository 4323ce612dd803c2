"""Adapters built from settings: what a warm Lambda keeps and what it reads again."""

import json

import boto3
import pytest
from moto import mock_aws

from shared import postgres
from shared.settings import get_settings
from shared.wiring import open_database


@pytest.fixture
def secrets():
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")


def test_a_rotated_database_password_is_read_again_at_the_next_connect(secrets, monkeypatch) -> None:
    # GIVEN a consumer whose database URL comes from Secrets Manager
    arn = secrets.create_secret(
        Name="rotating", SecretString=json.dumps({"host": "db", "username": "u", "password": "old"})
    )["ARN"]
    monkeypatch.setenv("DRUGSYNC_DATABASE_SECRET_ARN", arn)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DRUGSYNC_DATABASE_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    get_settings.cache_clear()
    dialled: list[str] = []

    def dial(url: str) -> FakeConnection:
        dialled.append(url)
        return FakeConnection()

    monkeypatch.setattr(postgres, "connect", dial)
    database = open_database(get_settings())
    database.connection()

    # WHEN the password is rotated and the connection breaks (a failover, a restart)
    secrets.put_secret_value(
        SecretId=arn, SecretString=json.dumps({"host": "db", "username": "u", "password": "new"})
    )
    first = database.connection()
    assert isinstance(first, FakeConnection)
    first.broken = True
    database.connection()

    # THEN the reconnect uses the new password
    assert [url.split("@")[0] for url in dialled] == ["postgresql://u:old", "postgresql://u:new"]
    get_settings.cache_clear()


class FakeConnection:
    closed = False
    broken = False

    def close(self) -> None:
        self.closed = True
