"""Fixtures the unit tests share."""

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber


@pytest.fixture
def bedrock() -> Iterator[tuple[Any, Stubber]]:
    """A bedrock-runtime client that reaches nothing: answers are queued on its Stubber."""
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    with Stubber(client) as stubber:
        yield client, stubber
