"""The local stack as a deployed stack: what `--stack drugsync-local` reaches.

On AWS an operator names a CloudFormation stack and drugsync finds the rest through it: queue URLs
and secret ARNs in its outputs, settings in the consumer's environment, the producer to invoke. The
local stack registers the same things with its moto endpoint (a stack with serverless.yml's
outputs, the database and Redis connections as secrets) and serves the two functions through a
local Lambda API (console/lambda_api.py), so every `--stack` command runs here as written.
"""

import json
import os
import subprocess
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3

from console.lambda_api import LocalFunction
from console.paths import PROJECT_ROOT, state_dir

LOCAL_STACK_NAME = "drugsync-local"
# As serverless.yml declares them: timeouts, memory, and reservedConcurrency (the consumer's is the
# default maxConcurrency param).
PRODUCER = LocalFunction(
    name=f"{LOCAL_STACK_NAME}-producer",
    handler="producer/handler.lambda_handler",
    timeout_seconds=300,
    reserved_concurrency=1,
    memory_mb=512,
)
CONSUMER = LocalFunction(
    name=f"{LOCAL_STACK_NAME}-consumer",
    handler="consumer/handler.lambda_handler",
    timeout_seconds=120,
    reserved_concurrency=10,
    memory_mb=1024,
)
# What serverless.yml's provider.environment sets beside the URLs and ARNs (its default params).
FUNCTION_SETTINGS = {
    "POWERTOOLS_SERVICE_NAME": "drugsync",
    "POWERTOOLS_METRICS_NAMESPACE": "drugsync",
    "DRUGSYNC_EMBEDDER": "hashing",
    "DRUGSYNC_EMBEDDING_DIM": "384",
    "DRUGSYNC_RANGE_SIZE": "1000",
    "DRUGSYNC_CONSUMER_TIMEOUT_SECONDS": str(int(CONSUMER.timeout_seconds)),
}
# Lambda gives its functions credentials, a region (and here an endpoint): the local stack's, given
# to the Lambda API process, which passes them on as Lambda does; not part of the configuration.
AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def database_secret(database_url: str) -> dict[str, Any]:
    """The RDS secret shape for the local PostgreSQL, whose host is its unix-socket directory."""
    parts = urlsplit(database_url)
    query = parse_qs(parts.query)
    return {
        "engine": "postgres",
        "host": query.get("host", [parts.hostname or "localhost"])[0],
        "port": parts.port or 5432,
        "username": parts.username or "postgres",
        # pgserver trusts local connections; the RDS shape requires a password all the same.
        "password": parts.password or "local",
        "dbname": parts.path.lstrip("/") or "postgres",
    }


def create_secrets(env: dict[str, str]) -> dict[str, str]:
    """The database and Redis connections as Secrets Manager secrets: {output name: ARN}."""
    client = boto3.client("secretsmanager")
    database = json.dumps(database_secret(env["DATABASE_URL"]))
    secrets = {
        "DatabaseSecretArn": (f"{LOCAL_STACK_NAME}/database", database),
        "RedisSecretArn": (f"{LOCAL_STACK_NAME}/redis", json.dumps({"url": env["REDIS_URL"]})),
    }
    return {
        output: client.create_secret(Name=name, SecretString=value)["ARN"]
        for output, (name, value) in secrets.items()
    }


def function_environment(env: dict[str, str], secret_arns: dict[str, str]) -> dict[str, str]:
    """What the deployed functions' environment holds: no URL with a credential, only ARNs."""
    return {
        **FUNCTION_SETTINGS,
        "QUEUE_URL": env["QUEUE_URL"],
        "DLQ_URL": env["DLQ_URL"],
        "DRUGSYNC_DATABASE_SECRET_ARN": secret_arns["DatabaseSecretArn"],
        "DRUGSYNC_REDIS_SECRET_ARN": secret_arns["RedisSecretArn"],
    }


def stack_template(env: dict[str, str], secret_arns: dict[str, str]) -> dict[str, Any]:
    """A template whose outputs are serverless.yml's (the dashboard is AWS's alone)."""
    values = {
        "WorkQueueUrl": env["QUEUE_URL"],
        "DeadLetterQueueUrl": env["DLQ_URL"],
        "ProducerFunctionName": PRODUCER.name,
        "ConsumerFunctionName": CONSUMER.name,
        **secret_arns,
    }
    outputs: dict[str, Any] = {name: {"Value": value} for name, value in values.items()}
    outputs["AlarmTopicArn"] = {"Value": {"Ref": "AlarmTopic"}}
    topic = {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": f"{LOCAL_STACK_NAME}-alarms"}}
    return {"Resources": {"AlarmTopic": topic}, "Outputs": outputs}


def register_stack(env: dict[str, str]) -> dict[str, str]:
    """Secrets and the CloudFormation stack in the local AWS endpoint; the functions' environment."""
    secret_arns = create_secrets(env)
    template = stack_template(env, secret_arns)
    boto3.client("cloudformation").create_stack(StackName=LOCAL_STACK_NAME, TemplateBody=json.dumps(template))
    return function_environment(env, secret_arns)


def write_functions(environment: dict[str, str]) -> str:
    folder = state_dir() / "lambda"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "functions.json"
    entries = [{**vars(function), "environment": environment} for function in (PRODUCER, CONSUMER)]
    path.write_text(json.dumps(entries, indent=2))
    return str(path)


def start_lambda_api(functions_file: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The local Lambda API, with the local stack's AWS variables (`env`) to give its functions."""
    folder = state_dir() / "lambda"
    aws = {name: env[name] for name in AWS_VARIABLES if name in env}
    command = [sys.executable, "-m", "console.lambda_api", "--port", str(port), "--functions", functions_file,
               "--log", str(folder / "functions.log")]  # fmt: skip
    with open(folder / "lambda-api.log", "ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT,
            env={**os.environ, **aws},
        )  # fmt: skip
