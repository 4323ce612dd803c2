"""`--stack NAME`: settings read from a deployed stack, and the producer invoked exactly once."""

import contextlib
import io
import json
import os
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from console import cli, deployed, local_stack
from console.deployed import (
    Deployment,
    FunctionFailed,
    _where,
    deployed_environment,
    deployed_settings,
    describe_deployment,
    invoke_config,
    invoke_producer,
)
from shared.errors import ConfigError, UnavailableError
from shared.models import SyncRequest, SyncSummary

OUTPUTS = {
    "WorkQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/drugsync-prod-work",
    "DeadLetterQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/drugsync-prod-dlq",
    "DatabaseSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:drugsync-db-AbCdEf",
    "RedisSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:drugsync-redis-GhIjKl",
    "ProducerFunctionName": "drugsync-prod-producer",
    "ConsumerFunctionName": "drugsync-prod-consumer",
}
CONSUMER_ENV = {
    "POWERTOOLS_SERVICE_NAME": "drugsync",
    "DRUGSYNC_EMBEDDER": "bedrock",
    "DRUGSYNC_EMBEDDING_DIM": "1024",
    "DRUGSYNC_INDEX_NAME": "idx:prod",
    "DRUGSYNC_TABLE": "catalog.drugs",
    "DRUGSYNC_DATABASE_CA_BUNDLE": "/var/task/certs/global-bundle.pem",
    "QUEUE_URL": OUTPUTS["WorkQueueUrl"],
}
# What a shell holds after `eval "$(drugsync local up)"` and some experiments.
STRAY = {
    "DATABASE_URL": "postgresql://postgres:@/postgres?host=/tmp/local",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "QUEUE_URL": "http://127.0.0.1:5000/123456789012/drugsync-work",
    "drugsync_table": "drugs_scratch",
    "DRUGSYNC_KEY_PREFIX": "scratch:",
    "DRUGSYNC_DATABASE_CA_BUNDLE": "/etc/ssl/rds-global-bundle.pem",
    "DRUGSYNC_STATE_DIR": "/home/ops/.drugsync",
    "AWS_PROFILE": "prod-operator",
}
PROD = Deployment("drugsync-prod", "UPDATE_COMPLETE", dict(OUTPUTS), dict(CONSUMER_ENV))


def test_the_stack_wins_over_stray_local_settings() -> None:
    env = deployed_environment(PROD, STRAY)

    assert env["QUEUE_URL"] == OUTPUTS["WorkQueueUrl"]
    assert env["DLQ_URL"] == OUTPUTS["DeadLetterQueueUrl"]
    assert env["DRUGSYNC_DATABASE_SECRET_ARN"] == OUTPUTS["DatabaseSecretArn"]
    assert env["DRUGSYNC_REDIS_SECRET_ARN"] == OUTPUTS["RedisSecretArn"]
    assert env["DRUGSYNC_TABLE"] == "catalog.drugs"
    # a URL would win over the secrets, a stray prefix over the deployed default: both are gone
    for stray in ("DATABASE_URL", "REDIS_URL", "drugsync_table", "DRUGSYNC_KEY_PREFIX"):
        assert stray not in env
    # what describes the operator's machine stays; the function's own runtime variables do not come
    assert env["DRUGSYNC_DATABASE_CA_BUNDLE"] == "/etc/ssl/rds-global-bundle.pem"
    assert env["DRUGSYNC_STATE_DIR"] == "/home/ops/.drugsync"
    assert env["AWS_PROFILE"] == "prod-operator"
    assert "POWERTOOLS_SERVICE_NAME" not in env


def test_settings_are_the_consumers_own_and_the_environment_is_left_as_it_was() -> None:
    before = dict(os.environ)

    settings = deployed_settings(PROD, STRAY)

    assert (settings.embedder, settings.embedding_dim) == ("bedrock", 1024)
    assert (settings.index_name, settings.table) == ("idx:prod", "catalog.drugs")
    assert settings.key_prefix == "drug:"  # the default the deployed consumer uses, not the stray one
    assert settings.redis_url is None
    assert settings.database_url is None
    assert settings.redis_secret_arn == OUTPUTS["RedisSecretArn"]
    assert settings.database_ca_bundle == "/etc/ssl/rds-global-bundle.pem"
    assert dict(os.environ) == before


def test_a_wrong_deployed_setting_is_a_config_error_naming_the_stack_and_the_variable() -> None:
    broken = Deployment("drugsync-prod", "UPDATE_COMPLETE", dict(OUTPUTS), {"DRUGSYNC_EMBEDDING_DIM": "lots"})
    with pytest.raises(ConfigError, match="stack drugsync-prod: invalid settings: DRUGSYNC_EMBEDDING_DIM"):
        deployed_settings(broken, {})


@pytest.mark.parametrize("missing", ["WorkQueueUrl", "RedisSecretArn", "DatabaseSecretArn"])
def test_a_missing_output_is_a_config_error_naming_it(missing: str) -> None:
    outputs = {name: value for name, value in OUTPUTS.items() if name != missing}
    old = Deployment("drugsync-old", "UPDATE_COMPLETE", outputs, {})
    with pytest.raises(ConfigError, match=f"stack drugsync-old .* has no output {missing}"):
        deployed_environment(old, {})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


def _function(name: str, timeout: int, env: dict[str, str]) -> None:
    role = boto3.client("iam").create_role(RoleName=f"r-{name}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    boto3.client("lambda").create_function(
        FunctionName=name, Runtime="python3.12", Role=role, Handler="h.h", Timeout=timeout,
        Code={"ZipFile": _zip()}, Environment={"Variables": env},
    )  # fmt: skip


def _zip() -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("h.py", "def h(event, context):\n    return {}\n")
    return buffer.getvalue()


def _stack(name: str, outputs: dict[str, str]) -> None:
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    boto3.client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))


def test_a_deployment_is_read_from_cloudformation_and_the_consumer(aws) -> None:
    _function(OUTPUTS["ConsumerFunctionName"], 120, CONSUMER_ENV)
    _stack("drugsync-prod", OUTPUTS)

    found = describe_deployment("drugsync-prod")

    assert found.outputs == OUTPUTS
    assert found.consumer_environment == CONSUMER_ENV
    assert found.status == "CREATE_COMPLETE"


def test_a_stack_that_does_not_exist_is_one_config_line(aws, capsys) -> None:
    assert cli.main(["status", "--stack", "drugsync-nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "ConfigError: stack drugsync-nope" in err
    assert "does not exist" in err


def test_with_a_stack_the_local_stack_fallback_never_applies(aws, monkeypatch, capsys) -> None:
    # The local stack would add its moto endpoint and test credentials where the shell has none.
    def local_fallback() -> None:
        raise AssertionError("the local stack's environment was applied")

    monkeypatch.setattr(local_stack, "apply_stack_env", local_fallback)
    assert cli.main(["verify", "--stack", "drugsync-nope"]) == 2
    assert "ConfigError: stack drugsync-nope" in capsys.readouterr().err


def test_a_stack_without_the_consumer_output_names_it(aws, capsys) -> None:
    _stack("drugsync-old", {k: v for k, v in OUTPUTS.items() if k != "ConsumerFunctionName"})
    assert cli.main(["runs", "--stack", "drugsync-old"]) == 2
    assert (
        "stack drugsync-old (CREATE_COMPLETE) has no output ConsumerFunctionName" in capsys.readouterr().err
    )


def test_drugsync_stack_in_the_environment_selects_the_stack(aws, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DRUGSYNC_STACK", "drugsync-from-env")
    assert cli.main(["dlq"]) == 2
    assert "stack drugsync-from-env" in capsys.readouterr().err


def _summary() -> dict[str, Any]:
    return {
        "run_id": str(uuid.uuid4()), "eligible_drugs": 484_000, "ranges": 484, "messages_sent": 484,
        "range_size": 1000, "max_drugs": None, "plan_seconds": 0.3, "enqueue_seconds": 12.1,
    }  # fmt: skip


def _payload(value: Any) -> StreamingBody:
    raw = json.dumps(value).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


@pytest.fixture
def lambda_stub() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x",
        config=invoke_config(300),
    )  # fmt: skip
    with Stubber(client) as stubber:
        yield client, stubber


def test_the_producer_is_invoked_with_the_request_and_its_summary_returned(lambda_stub) -> None:
    client, stubber = lambda_stub
    summary = _summary()
    stubber.add_response(
        "invoke",
        {"StatusCode": 200, "Payload": _payload(summary)},
        {"FunctionName": "drugsync-prod-producer", "InvocationType": "RequestResponse",
         "Payload": b'{"max_drugs":5000}'},
    )  # fmt: skip

    result = invoke_producer(client, "drugsync-prod-producer", SyncRequest(max_drugs=5000))

    assert str(result.run_id) == summary["run_id"]
    assert (result.eligible_drugs, result.ranges) == (484_000, 484)
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize("kind", ["Handled", "Unhandled"])
def test_a_function_error_is_one_line_with_its_type_and_message(lambda_stub, kind: str) -> None:
    client, stubber = lambda_stub
    error = {"errorType": "ConfigError", "errorMessage": "no Redis: set REDIS_URL\nor the secret",
             "stackTrace": ["  File \"/var/task/producer/handler.py\", line 80"]}  # fmt: skip
    stubber.add_response("invoke", {"StatusCode": 200, "FunctionError": kind, "Payload": _payload(error)})

    with pytest.raises(FunctionFailed) as failed:
        invoke_producer(client, "drugsync-prod-producer", SyncRequest())

    assert (
        str(failed.value)
        == "drugsync-prod-producer failed: ConfigError: no Redis: set REDIS_URL or the secret"
    )


def test_the_invoke_client_waits_beyond_the_function_timeout_and_never_retries(lambda_stub) -> None:
    client, _ = lambda_stub
    assert client.meta.config.read_timeout > 300
    assert client.meta.config.retries["total_max_attempts"] == 1


class _Slow(BaseHTTPRequestHandler):
    """A Lambda endpoint that answers later than the client waits, or with a retryable 429."""

    requests = 0
    mode = "slow"

    def do_POST(self) -> None:
        type(self).requests += 1
        if self.mode == "slow":
            time.sleep(2.5)
        body = json.dumps({"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}).encode()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the slow case: the client left
            self.send_response(429)
            self.send_header("x-amzn-ErrorType", "TooManyRequestsException")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_lambda() -> Iterator[tuple[str, type[_Slow]]]:
    handler = type("Handler", (_Slow,), {"requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("mode", ["slow", "throttled"])
def test_a_timed_out_or_throttled_invocation_is_sent_once_only(slow_lambda, monkeypatch, mode: str) -> None:
    # GIVEN a producer endpoint that answers after the client's read timeout, or refuses with a 429
    endpoint, handler = slow_lambda
    handler.mode = mode
    monkeypatch.setattr(deployed, "INVOKE_MARGIN_SECONDS", 1)
    client = boto3.client(
        "lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x",
        endpoint_url=endpoint, config=invoke_config(0),
    )  # fmt: skip

    # WHEN a run is started
    with pytest.raises(UnavailableError) as failed:
        invoke_producer(client, "drugsync-prod-producer", SyncRequest())

    # THEN the request reached the function once (a retry would start a second run)
    assert handler.requests == 1
    expected = "did not answer within 1s" if mode == "slow" else "a sync may be running already"
    assert expected in str(failed.value)


def test_sync_with_a_stack_invokes_its_producer_with_the_long_read_timeout(aws, monkeypatch, capsys) -> None:
    # GIVEN a stack whose producer may run 300 s
    _function(OUTPUTS["ProducerFunctionName"], 300, {})
    _stack("drugsync-prod", OUTPUTS)
    invoked: list[tuple[Any, str, SyncRequest]] = []
    summary = SyncSummary.model_validate(_summary())

    def invoke(client: Any, name: str, request: SyncRequest) -> SyncSummary:
        invoked.append((client, name, request))
        return summary

    monkeypatch.setattr(deployed, "invoke_producer", invoke)

    # WHEN `drugsync sync --stack` runs
    assert cli.main(["sync", "--stack", "drugsync-prod", "--range-size", "500", "--json"]) == 0

    # THEN the stack's producer got the request, through a client that outwaits it and never retries
    [(client, name, request)] = invoked
    assert (name, request) == ("drugsync-prod-producer", SyncRequest(range_size=500))
    assert client.meta.config.read_timeout >= 300 + 30
    assert client.meta.config.retries["total_max_attempts"] == 1
    assert json.loads(capsys.readouterr().out)["run_id"] == str(summary.run_id)

    # ... and, for a person, how to follow that run (not whichever is latest when they look)
    assert cli.main(["sync", "--stack", "drugsync-prod"]) == 0
    printed = capsys.readouterr().out
    assert f"follow it: drugsync status --watch --run {summary.run_id} --stack drugsync-prod" in printed


def test_sync_with_a_stack_prints_a_function_error_on_one_line_and_fails(aws, monkeypatch, capsys) -> None:
    # GIVEN a deployed producer that answers with an unhandled error
    _function(OUTPUTS["ProducerFunctionName"], 300, {})
    _stack("drugsync-prod", OUTPUTS)
    real_invoke = deployed.invoke_producer
    error = {"errorType": "Runtime.ImportModuleError", "errorMessage": "Unable to import module\n'producer'"}

    def invoke_stubbed(client: Any, name: str, request: SyncRequest) -> SyncSummary:
        with Stubber(client) as stubber:  # moto would need Docker to run the function
            stubber.add_response(
                "invoke", {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": _payload(error)}
            )
            return real_invoke(client, name, request)

    monkeypatch.setattr(deployed, "invoke_producer", invoke_stubbed)

    # WHEN `drugsync sync --stack` runs THEN it fails with the function's error on one line
    assert cli.main(["sync", "--stack", "drugsync-prod"]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "drugsync: FunctionFailed: drugsync-prod-producer failed:"
        " Runtime.ImportModuleError: Unable to import module 'producer'\n"
    )


def _with_bundle(path: str) -> Deployment:
    return Deployment(
        "drugsync-prod",
        "UPDATE_COMPLETE",
        dict(OUTPUTS),
        {**CONSUMER_ENV, "DRUGSYNC_DATABASE_CA_BUNDLE": path},
    )


def test_without_a_bundle_of_its_own_the_operator_verifies_aurora_with_the_rds_authorities_the_zip_ships(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRUGSYNC_CACHE_DIR", str(tmp_path))
    shell = {key: value for key, value in STRAY.items() if key != "DRUGSYNC_DATABASE_CA_BUNDLE"}

    env = deployed_environment(_with_bundle("/var/task/certs/rds-ca-bundle.pem"), shell)

    bundle = Path(env["DRUGSYNC_DATABASE_CA_BUNDLE"])
    assert bundle.parent == tmp_path
    context = ssl.create_default_context(cafile=str(bundle))
    assert len(context.get_ca_certs()) >= 100  # the Amazon RDS roots, not an empty or system store
    assert deployed_environment(_with_bundle("system"), shell)["DRUGSYNC_DATABASE_CA_BUNDLE"] == "system"
    with pytest.raises(ConfigError, match="set DRUGSYNC_DATABASE_CA_BUNDLE to a copy"):
        deployed_environment(_with_bundle("/var/task/certs/other.pem"), shell)


def test_a_not_found_names_the_region_and_every_endpoint_that_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", "http://127.0.0.1:5001")
    monkeypatch.delenv("AWS_REGION", raising=False)

    where = _where()

    assert where == " (region eu-west-1, endpoint http://127.0.0.1:5000, lambda http://127.0.0.1:5001)"


def test_an_older_or_cut_off_copy_of_the_bundle_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRUGSYNC_CACHE_DIR", str(tmp_path))
    (tmp_path / "rds-ca-bundle-0123456789abcdef.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIE")
    shell = {key: value for key, value in STRAY.items() if key != "DRUGSYNC_DATABASE_CA_BUNDLE"}

    bundle = deployed_environment(_with_bundle("/var/task/certs/rds-ca-bundle.pem"), shell)[
        "DRUGSYNC_DATABASE_CA_BUNDLE"
    ]

    assert len(ssl.create_default_context(cafile=bundle).get_ca_certs()) >= 100
