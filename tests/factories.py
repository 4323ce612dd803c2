"""Event factories: SQS records in Lambda's shape, range message bodies, Bedrock answers."""

import hashlib
import io
import json
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any, cast

from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.response import StreamingBody
from botocore.stub import Stubber

from console.bootstrap import LocalLambdaContext
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


TITAN = "amazon.titan-embed-text-v2:0"
TOO_LONG = "Malformed input request: expected maxLength: 50000, actual: 50001, please reformat your input and try again."


def titan_response(vector: list[float]) -> dict[str, object]:
    """An InvokeModel answer of Titan Text Embeddings V2."""
    payload = json.dumps({"embedding": vector, "inputTextTokenCount": 3}).encode()
    return {"body": StreamingBody(io.BytesIO(payload), len(payload)), "contentType": "application/json"}


def refuse(stubber: Stubber, code: str, status: int, message: str = "") -> None:
    """The next InvokeModel request fails with this error code, HTTP status and message."""
    stubber.add_client_error(
        "invoke_model", service_error_code=code, service_message=message, http_status_code=status
    )


def count_requests(client: Any) -> list[str]:
    """The texts of the InvokeModel requests the client sends, counted before a Stubber can refuse one.

    provide-client-params is the first event of a call; a Stubber with no answer left raises at the next.
    """
    sent: list[str] = []
    client.meta.events.register(
        "provide-client-params.bedrock-runtime.InvokeModel",
        lambda params, **kwargs: sent.append(json.loads(params["body"])["inputText"]),
    )
    return sent


def readme_reader() -> dict[str, Any]:
    """The README's reader of the generations (its python block naming `@generations`), executed with
    the hashing embedder as its `embed()`: the namespace holds its `search`. The README's own text is
    what is tested."""
    from shared.embedders.hashing import HashingEmbedder

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [block.split("```")[0] for block in readme.split("```python\n")[1:]]
    source = textwrap.dedent(next(block for block in blocks if "@generations" in block))
    namespace: dict[str, Any] = {
        "embed": lambda text, name, dimension: HashingEmbedder(dimension, 16).embed_texts([text])[0]
    }
    exec(source, namespace)  # noqa: S102 - the README's own text is what is tested
    return namespace


def as_texts(store: Any, keys: list[str], drugs: list[Any]) -> list[str]:
    """Each search hit's key as the text its drug was embedded from. Synthetic drugs repeat texts, and
    drugs of one text tie in a KNN search, in either order: two searches agree when these lists do."""
    from shared.documents import build_embedding_text

    texts = {drug.id: build_embedding_text(drug) for drug in drugs}
    return [texts[store.drug_id(key)] for key in keys]


def record_calls(embedder: Any, signal: tuple[int, threading.Event] | None = None) -> list[int]:
    """Wrap the embedder's embed_texts: the returned list gets each call's number of texts; with
    `signal` (n, event), the event is set as call n (from 0) begins."""
    sizes: list[int] = []
    embed = embedder.embed_texts

    def embed_texts(texts: Any) -> Any:
        if signal is not None and signal[0] == len(sizes):
            signal[1].set()
        sizes.append(len(texts))
        return embed(texts)

    embedder.embed_texts = embed_texts
    return sizes
