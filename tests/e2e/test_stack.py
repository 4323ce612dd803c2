"""`drugsync status --stack NAME` against a deployed stack: CloudFormation, Lambda, SQS and Secrets
Manager in moto, the database and Redis the local servers, reached only through the secrets."""

import json
import os
import re
import uuid
from typing import Any

import pytest

from console import cli
from console.deployed import deployed_settings, describe_deployment
from console.local_stack import StackState
from console.seed import seed_drugs
from console.services import Services
from infra.check_template import REQUIRED_OUTPUTS
from shared.models import SyncRequest
from tests.conftest import aws_client, store_local_secrets

pytestmark = pytest.mark.e2e


def _template(tag: str) -> dict[str, Any]:
    """serverless.yml's shape where moto can hold it: queues, functions, topic, the same outputs.

    No event source mapping: moto would invoke the consumer through Docker on every message.
    """
    env = {
        "POWERTOOLS_SERVICE_NAME": "drugsync",
        "DRUGSYNC_DATABASE_SECRET_ARN": {"Ref": "DatabaseSecretArn"},
        "DRUGSYNC_REDIS_SECRET_ARN": {"Ref": "RedisSecretArn"},
        "QUEUE_URL": {"Ref": "WorkQueue"},
        "DLQ_URL": {"Ref": "DeadLetterQueue"},
        "DRUGSYNC_TABLE": f"drugs_{tag}",
        "DRUGSYNC_KEY_PREFIX": f"t{tag}:drug:",
        "DRUGSYNC_INDEX_NAME": f"idx:t{tag}",
        "DRUGSYNC_EMBEDDING_DIM": "128",
        "DRUGSYNC_RANGE_SIZE": "100",
    }

    def function(name: str, timeout: int) -> dict[str, Any]:
        return {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "FunctionName": f"{tag}-{name}", "Runtime": "python3.12", "Handler": f"{name}/handler.lambda_handler",
                "Role": {"Fn::GetAtt": ["Role", "Arn"]}, "Code": {"ZipFile": "def lambda_handler(e, c): pass"},
                "Timeout": timeout, "Environment": {"Variables": env},
            },
        }  # fmt: skip

    return {
        "Parameters": {"DatabaseSecretArn": {"Type": "String"}, "RedisSecretArn": {"Type": "String"}},
        "Resources": {
            "DeadLetterQueue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{tag}-dlq"}},
            "WorkQueue": {
                "Type": "AWS::SQS::Queue",
                "Properties": {
                    "QueueName": f"{tag}-work",
                    "VisibilityTimeout": 720,
                    "RedrivePolicy": {
                        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
                        "maxReceiveCount": 3,
                    },
                },
            },
            "Role": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {"Statement": []}}},
            "ProducerLambdaFunction": function("producer", 300),
            "ConsumerLambdaFunction": function("consumer", 120),
            "AlarmTopic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": f"{tag}-alarms"}},
        },
        "Outputs": {
            "WorkQueueUrl": {"Value": {"Ref": "WorkQueue"}},
            "DeadLetterQueueUrl": {"Value": {"Ref": "DeadLetterQueue"}},
            "ProducerFunctionName": {"Value": {"Ref": "ProducerLambdaFunction"}},
            "ConsumerFunctionName": {"Value": {"Ref": "ConsumerLambdaFunction"}},
            "DatabaseSecretArn": {"Value": {"Ref": "DatabaseSecretArn"}},
            "RedisSecretArn": {"Value": {"Ref": "RedisSecretArn"}},
            "DashboardName": {"Value": f"drugsync-{tag}"},
            "DashboardUrl": {
                "Value": {
                    "Fn::Sub": "https://${AWS::Region}.console.aws.amazon.com/cloudwatch/"
                    f"home?region=${{AWS::Region}}#dashboards:name=drugsync-{tag}"
                }
            },
            "AlarmTopicArn": {"Value": {"Ref": "AlarmTopic"}},
        },
    }


def _deploy(stack: StackState, name: str, tag: str) -> None:
    database_arn, redis_arn = store_local_secrets(stack, tag)
    aws_client(stack, "cloudformation").create_stack(
        StackName=name,
        TemplateBody=json.dumps(_template(tag)),
        Parameters=[
            {"ParameterKey": "DatabaseSecretArn", "ParameterValue": database_arn},
            {"ParameterKey": "RedisSecretArn", "ParameterValue": redis_arn},
        ],
    )


def test_status_of_a_deployed_stack_shows_its_run_queues_and_counts(
    stack: StackState, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a deployed stack, and an operator's shell still pointed at the local stack
    for key, value in stack.env.items():  # DATABASE_URL, REDIS_URL, QUEUE_URL... of the local stack
        monkeypatch.setenv(key, value)
    # This stack's functions live in moto's Lambda, not in the local stack's Lambda API.
    monkeypatch.delenv("AWS_ENDPOINT_URL_LAMBDA")
    monkeypatch.setenv("DRUGSYNC_TABLE", "drugs_stray")
    monkeypatch.setenv("DRUGSYNC_KEY_PREFIX", "stray:")
    tag = f"s{uuid.uuid4().hex[:8]}"
    name = f"drugsync-{tag}"
    _deploy(stack, name, tag)
    assert set(_template(tag)["Outputs"]) == set(REQUIRED_OUTPUTS)  # serverless.yml's, checked by infra-check

    # ... and a run of it in the ledger: its drugs seeded, its ranges in its work queue
    settings = deployed_settings(describe_deployment(name), os.environ)
    with Services(settings) as services:
        eligible = seed_drugs(services.conn, settings, 450)
        summary = services.producer.start(SyncRequest(range_size=100))

    # WHEN the operator asks for its status
    assert cli.main(["status", "--stack", name]) == 0
    printed = capsys.readouterr().out

    # THEN the run, the stack's queues (not the local ones) and the stack's table are shown
    assert f"run {summary.run_id}  running" in printed, printed
    assert f"0/{eligible:,} drugs  0/{summary.ranges} ranges" in printed
    assert f"queue: {summary.messages_sent} visible, 0 in flight, 0 delayed; dead-letter: 0" in printed
    assert re.search(
        rf"postgres eligible {eligible:,} \| redis documents 0 \| index documents 0 .*NOT consistent", printed
    ), printed
    assert summary.ranges == 5
    assert summary.messages_sent == summary.ranges

    # ... and DRUGSYNC_STACK selects it as --stack does, for --json too
    monkeypatch.setenv("DRUGSYNC_STACK", name)
    assert cli.main(["status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["run_id"] == str(summary.run_id)
    assert report["queue"]["visible"] == summary.messages_sent
    assert report["counts"]["postgres_eligible"] == eligible
