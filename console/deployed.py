"""`--stack NAME`: a deployed stack's settings, from its CloudFormation outputs and its consumer.

The settings are the deployed consumer's own environment (embedder, dimension, key prefix, index,
table and columns, range size...) with the stack's outputs for queues and secrets, so `verify`
and `search` read Redis exactly as the consumers write it. Settings in the operator's environment
give way to the stack's, even those the function leaves at their defaults: a stray DRUGSYNC_TABLE
or REDIS_URL left from the local stack must not point a command at the wrong place. Only what
describes the operator's machine is kept (OPERATOR_VARIABLES), and AWS_* (credentials, region).
"""

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from pydantic import ValidationError

from console.paths import cache_dir
from infra.ca_bundle import BUNDLE_IN_ARTEFACT, LAMBDA_TASK_ROOT, rds_ca_bundle
from shared.errors import ConfigError, DrugSyncError, UnavailableError
from shared.models import SyncRequest, SyncSummary
from shared.settings import Settings, describe_settings_error, settings_variables

STACK_VARIABLE = "DRUGSYNC_STACK"
OUTPUT_VARIABLES = {
    "WorkQueueUrl": "QUEUE_URL",
    "DeadLetterQueueUrl": "DLQ_URL",
    "DatabaseSecretArn": "DRUGSYNC_DATABASE_SECRET_ARN",
    "RedisSecretArn": "DRUGSYNC_REDIS_SECRET_ARN",
}
# The CA bundle verifies the database from where the command runs; the function's is a /var/task path.
CA_BUNDLE_VARIABLE = "DRUGSYNC_DATABASE_CA_BUNDLE"
OPERATOR_VARIABLES = frozenset({CA_BUNDLE_VARIABLE})
# Beyond the producer's own timeout: the time to send the request and read the answer.
INVOKE_MARGIN_SECONDS = 60
_CONFIG_CODES = (  # a wrong name or missing permission: retrying will not help
    "ResourceNotFoundException",
    "ValidationError",
    "AccessDeniedException",
    "AccessDenied",
)
_ASKED_TOO_OFTEN = ("Throttling", "ThrottlingException", "TooManyRequestsException")


class FunctionFailed(DrugSyncError):
    """A deployed function answered with an error (its errorType and errorMessage)."""


@dataclass(frozen=True)
class Deployment:
    """What a deployed stack tells about itself: its outputs and its consumer's environment."""

    stack: str
    status: str
    outputs: dict[str, str]
    consumer_environment: dict[str, str]

    def output(self, name: str) -> str:
        value = self.outputs.get(name)
        if not value:
            raise ConfigError(
                f"stack {self.stack} ({self.status}) has no output {name}: deploy the current serverless.yml"
            )
        return value


def deployed_environment(deployment: Deployment, current: Mapping[str, str]) -> dict[str, str]:
    """`current` with its settings replaced by the deployment's: the consumer's, then the outputs."""
    settings = settings_variables()

    def is_deployed(name: str) -> bool:
        return name.upper() in settings and name.upper() not in OPERATOR_VARIABLES

    kept = {name: value for name, value in current.items() if not is_deployed(name)}
    function = {name: value for name, value in deployment.consumer_environment.items() if is_deployed(name)}
    outputs = {variable: deployment.output(name) for name, variable in OUTPUT_VARIABLES.items()}
    bundle = deployment.consumer_environment.get(CA_BUNDLE_VARIABLE)
    if bundle and CA_BUNDLE_VARIABLE not in {name.upper() for name in current}:
        kept[CA_BUNDLE_VARIABLE] = local_ca_bundle(bundle)
    return {**kept, **function, **outputs}


def local_ca_bundle(deployed_path: str) -> str:
    """Where this machine finds the CA bundle the functions verify the database with.

    The functions read theirs from the zip (/var/task/...); the operator's commands need the same
    authorities, or verify-full against the system store fails on Aurora. The RDS bundle is the one
    infra/ca_bundle.py puts in the zip; any other /var/task file must be named by the operator.
    """
    if not deployed_path.startswith(LAMBDA_TASK_ROOT + "/"):
        return deployed_path  # "system" or a path the operator's machine may share
    if deployed_path != f"{LAMBDA_TASK_ROOT}/{BUNDLE_IN_ARTEFACT}":
        raise ConfigError(
            f"the deployed functions verify the database with {deployed_path} from their zip:"
            f" set {CA_BUNDLE_VARIABLE} to a copy of that file"
        )
    try:
        text = rds_ca_bundle()
    except SystemExit as error:
        raise ConfigError(f"{error}; or set {CA_BUNDLE_VARIABLE} to the Amazon RDS CA bundle") from None
    # Named by its content: a newer bundle (a reviewed lock-file change) is a new file, never a
    # stale copy; written whole or not at all, so a cut-off write is never read.
    copy = cache_dir() / f"rds-ca-bundle-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pem"
    if not copy.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(copy)
    return str(copy)


def deployed_settings(deployment: Deployment, current: Mapping[str, str]) -> Settings:
    """Settings read as the consumer reads them, from the deployed environment (see module doc)."""
    with _environment(deployed_environment(deployment, current)):
        try:
            return Settings()
        except ValidationError as error:
            raise ConfigError(f"stack {deployment.stack}: {describe_settings_error(error)}") from error


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ is `values` inside, as it was after: pydantic-settings reads only os.environ."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def read_outputs(stack: str) -> Deployment:
    """The stack's outputs (DescribeStacks), without its consumer's environment."""
    with _aws_errors(f"stack {stack}"):
        cloudformation = boto3.client("cloudformation")
        found = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    outputs = {item["OutputKey"]: item.get("OutputValue", "") for item in found.get("Outputs", [])}
    return Deployment(stack, found.get("StackStatus", "?"), outputs, {})


def describe_deployment(stack: str) -> Deployment:
    """The stack's outputs and its consumer's environment (GetFunctionConfiguration)."""
    found = read_outputs(stack)
    configuration = function_configuration(found.output("ConsumerFunctionName"))
    environment = configuration.get("Environment", {}).get("Variables", {})
    return Deployment(stack, found.status, found.outputs, dict(environment))


def function_configuration(function_name: str) -> dict[str, Any]:
    with _aws_errors(f"function {function_name}"):
        configuration: dict[str, Any] = boto3.client("lambda").get_function_configuration(
            FunctionName=function_name
        )
    return configuration


def start_deployed_run(stack: str, request: SyncRequest) -> SyncSummary:
    """Invoke the stack's producer once, waiting as long as its timeout allows."""
    producer = read_outputs(stack).output("ProducerFunctionName")
    timeout = int(function_configuration(producer).get("Timeout", 900))
    with _aws_errors(f"function {producer}"):
        client = boto3.client("lambda", config=invoke_config(timeout))
    return invoke_producer(client, producer, request)


def invoke_config(function_timeout: int) -> Config:
    """Wait for the longest run the function may make, and send the invocation once only.

    boto3 reads for 60 s by default and retries a timed-out or throttled call: a second
    invocation would start a second run while the first one goes on.
    https://docs.aws.amazon.com/boto3/latest/guide/retries.html
    """
    return Config(
        read_timeout=function_timeout + INVOKE_MARGIN_SECONDS,
        connect_timeout=10,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )


def invoke_producer(lambda_client: Any, function_name: str, request: SyncRequest) -> SyncSummary:
    """Start a run with the deployed producer (RequestResponse) and return its summary."""
    # Only what differs from the defaults: a producer deployed before a field existed still accepts
    # every request that does not use it (its event model forbids unknown fields).
    payload = request.model_dump_json(exclude_none=True, exclude_defaults=True).encode()
    try:
        with _aws_errors(f"function {function_name}"):
            response = _invoke_once(lambda_client, function_name, payload)
    except ReadTimeoutError:
        waited = lambda_client.meta.config.read_timeout
        raise UnavailableError(
            f"{function_name} did not answer within {waited}s; the run may still be going:"
            " see `drugsync runs --stack ...` before starting another"
        ) from None
    body = response["Payload"].read()
    if response.get("FunctionError"):
        raise FunctionFailed(f"{function_name} failed: {describe_function_error(body)}")
    return SyncSummary.model_validate_json(body)


def _invoke_once(lambda_client: Any, function_name: str, payload: bytes) -> Any:
    try:
        return lambda_client.invoke(
            FunctionName=function_name, InvocationType="RequestResponse", Payload=payload
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "TooManyRequestsException":
            raise
        raise UnavailableError(
            f"{function_name} refused the invocation (TooManyRequestsException): a sync may be running"
            " already (the producer runs one at a time), or Lambda throttles; see `drugsync runs --stack ...`"
        ) from error


def describe_function_error(body: bytes) -> str:
    """'errorType: errorMessage' of a Lambda error payload, on one line."""
    try:
        error = json.loads(body)
    except ValueError:
        error = None
    if not isinstance(error, dict):
        return " ".join(body.decode(errors="replace").split()) or "no error payload"
    message = " ".join(str(error.get("errorMessage", "")).split())
    return f"{error.get('errorType', 'Error')}: {message}"


@contextlib.contextmanager
def _aws_errors(what: str) -> Iterator[None]:
    """AWS failures as the project's errors: wrong names and permissions are ConfigError."""
    try:
        yield
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if code in _ASKED_TOO_OFTEN:
            raise UnavailableError(f"{what}: {code}: {message}") from error
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _CONFIG_CODES or status in (403, 404):
            raise ConfigError(f"{what}: {code}: {message}{_where()}") from error
        raise UnavailableError(f"{what}: {code}: {message}") from error
    except (NoCredentialsError, PartialCredentialsError, NoRegionError) as error:
        raise ConfigError(f"{what}: {error}") from error
    except ReadTimeoutError:
        raise  # the caller knows what a timeout means there
    except BotoCoreError as error:
        raise UnavailableError(f"{what}: {error}") from error


def _where() -> str:
    """Which region and endpoint answered, when it may not be the one meant (AWS_ENDPOINT_URL set)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    endpoints = sorted(
        f"{name.removeprefix('AWS_ENDPOINT_URL').lstrip('_').lower() or 'endpoint'} {value}"
        for name, value in os.environ.items()
        if name.startswith("AWS_ENDPOINT_URL") and value
    )  # AWS_ENDPOINT_URL, and per service AWS_ENDPOINT_URL_LAMBDA...: "endpoint URL", "lambda URL"
    parts = [f"region {region}" if region else "", *endpoints]
    where = ", ".join(part for part in parts if part)
    return f" ({where})" if where else ""
