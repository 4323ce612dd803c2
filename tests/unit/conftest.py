"""Fixtures the unit tests share."""

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from shared import redact


@pytest.fixture
def bedrock() -> Iterator[tuple[Any, Stubber]]:
    """A bedrock-runtime client that reaches nothing: answers are queued on its Stubber."""
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stubber:
        yield client, stubber


@pytest.fixture
def no_known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test starts in a process that has used no connection string or secret yet."""
    monkeypatch.setattr(redact, "_known_secrets", set())


@pytest.fixture
def secrets() -> Iterator[Any]:
    """Secrets Manager in moto."""
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")
