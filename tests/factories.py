"""Event factories: SQS records in Lambda's shape, and range message bodies."""

import hashlib
import uuid
from typing import Any, cast

from aws_lambda_powertools.utilities.typing import LambdaContext

from console.lambda_context import LocalLambdaContext
from shared.models import RangeMessage


def range_body(run_id: uuid.UUID, first_id: int, last_id: int, expected: int) -> str:
    return RangeMessage(
        run_id=run_id, first_id=first_id, last_id=last_id, expected_count=expected
    ).model_dump_json()


def sqs_record(body: str, message_id: str | None = None) -> dict[str, Any]:
    return {
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": "receipt-" + (message_id or "x"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1767225600000",
            "SenderId": "AIDAEXAMPLE",
            "ApproximateFirstReceiveTimestamp": "1767225600001",
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:drugsync-work",
        "awsRegion": "us-east-1",
    }


def lambda_context(timeout_seconds: float = 60.0) -> LambdaContext:
    """A context with a real deadline, typed as the one Lambda passes."""
    return cast(LambdaContext, LocalLambdaContext(timeout_seconds=timeout_seconds))


def sqs_event(*bodies: str) -> dict[str, Any]:
    return {"Records": [sqs_record(body, message_id=f"m{i}") for i, body in enumerate(bodies)]}
