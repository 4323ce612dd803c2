"""The local stack answers as a deployed stack: outputs, secrets, function configuration, invoke."""

import json
from typing import Any

import boto3
import psycopg
import pytest

from console import local_deploy
from console.local_stack import StackState
from console.seed import seed_drugs
from shared.generations import RedisGenerations
from shared.ledger import PostgresLedger
from shared.postgres import Database
from shared.redis_store import RedisDocumentStore, connect_redis
from shared.settings import Settings
from tests.conftest import end_earlier_runs

pytestmark = pytest.mark.integration


def _client(stack: StackState, service: str) -> Any:
    endpoint = stack.env["AWS_ENDPOINT_URL_LAMBDA" if service == "lambda" else "AWS_ENDPOINT_URL"]
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_the_stack_has_the_outputs_serverless_yml_declares(stack: StackState) -> None:
    found = _client(stack, "cloudformation").describe_stacks(StackName=local_deploy.LOCAL_STACK_NAME)[
        "Stacks"
    ][0]
    outputs = {item["OutputKey"]: item["OutputValue"] for item in found["Outputs"]}
    assert outputs["WorkQueueUrl"] == stack.env["QUEUE_URL"]
    assert outputs["DeadLetterQueueUrl"] == stack.env["DLQ_URL"]
    assert outputs["ProducerFunctionName"] == "drugsync-local-producer"
    assert outputs["AlarmTopicArn"].startswith("arn:aws:sns:")
    secrets = _client(stack, "secretsmanager")
    redis_secret = json.loads(secrets.get_secret_value(SecretId=outputs["RedisSecretArn"])["SecretString"])
    assert redis_secret == {"url": stack.env["REDIS_URL"]}
    database = json.loads(secrets.get_secret_value(SecretId=outputs["DatabaseSecretArn"])["SecretString"])
    assert database["host"].startswith("/")  # the unix-socket directory


def test_the_functions_environment_names_secrets_not_credentials(stack: StackState) -> None:
    configuration = _client(stack, "lambda").get_function_configuration(
        FunctionName="drugsync-local-consumer"
    )
    variables = configuration["Environment"]["Variables"]
    assert "REDIS_URL" not in variables
    assert "DATABASE_URL" not in variables
    assert not [name for name in variables if name.startswith("AWS_")]  # Lambda's own, never configured
    assert variables["DRUGSYNC_REDIS_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
    assert configuration["Handler"] == "consumer/handler.lambda_handler"


def test_invoking_the_producer_starts_a_run_through_the_secrets(stack: StackState) -> None:
    end_earlier_runs(stack.env["DATABASE_URL"])  # the stack's own names, shared with earlier tests' runs
    with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
        eligible = seed_drugs(conn, Settings(table="drugs"), 40)
    try:
        answer = _client(stack, "lambda").invoke(
            FunctionName="drugsync-local-producer", Payload=json.dumps({"range_size": 10})
        )
        summary = json.loads(answer["Payload"].read())
        assert "FunctionError" not in answer, summary
        assert summary["eligible_drugs"] == eligible
        assert summary["ranges"] == -(-eligible // 10)
        database = Database(stack.env["DATABASE_URL"])
        try:
            assert str(PostgresLedger(database).latest_run_id()) == summary["run_id"]
        finally:
            database.close()
    finally:
        sqs = _client(stack, "sqs")
        sqs.purge_queue(QueueUrl=stack.env["QUEUE_URL"])
        # Every generation the run began (its index, documents, alias and registry) goes.
        RedisGenerations(
            RedisDocumentStore(connect_redis(stack.env["REDIS_URL"]), "drug:", "idx:drugs")
        ).clear_all()
