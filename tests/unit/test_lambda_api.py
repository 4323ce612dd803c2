"""The local Lambda API answers boto3's Lambda client the way Lambda does."""

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from console import local_deploy
from console.lambda_api import LambdaApi, LocalFunction, function_name, serve
from console.local_stack import free_port
from console.paths import PROJECT_ROOT

ECHO = LocalFunction(
    name="drugsync-local-producer",
    handler="tests/unit/event_source_handlers.echo",
    timeout_seconds=3,
    environment={"DRUGSYNC_RANGE_SIZE": "500"},
)
# One at a time, as the producer's reservedConcurrency 1 allows.
SINGLE = LocalFunction(
    "drugsync-local-single", "tests/unit/event_source_handlers.echo", 10, reserved_concurrency=1
)
BROKEN = LocalFunction("drugsync-local-broken", "tests/unit/import_failure_handler.lambda_handler", 3)


@contextlib.contextmanager
def _served(*functions: LocalFunction) -> Iterator[Any]:
    """A boto3 Lambda client of a LambdaApi serving `functions` (no retries: each answer as it came)."""
    api = LambdaApi({function.name: function for function in functions})
    port = free_port()
    server = serve(api, port)
    try:
        yield boto3.client(
            "lambda",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
        )
    finally:
        server.shutdown()
        server.server_close()
        api.close()


@pytest.fixture(scope="module")
def lambda_client() -> Iterator[Any]:
    with _served(ECHO, SINGLE, BROKEN) as client:
        yield client


def test_invoke_runs_the_handler_with_the_event_and_a_deadline(lambda_client) -> None:
    answer = lambda_client.invoke(FunctionName=ECHO.name, Payload=json.dumps({"max_drugs": 7}))
    assert answer["StatusCode"] == 200
    assert "FunctionError" not in answer
    payload = json.loads(answer["Payload"].read())
    assert payload["event"] == {"max_drugs": 7}
    assert payload["function"] == ECHO.name
    assert 0 < payload["remaining_ms"] <= 3000


def test_a_raising_handler_is_a_function_error_with_its_type_and_message(lambda_client) -> None:
    answer = lambda_client.invoke(FunctionName=ECHO.name, Payload=json.dumps({"raise": "no such table"}))
    assert answer["StatusCode"] == 200
    assert answer["FunctionError"] == "Unhandled"
    assert json.loads(answer["Payload"].read()) == {
        "errorType": "ValueError",
        "errorMessage": "no such table",
    }


def test_an_overrun_is_killed_and_reported_as_a_timeout(lambda_client) -> None:
    answer = lambda_client.invoke(FunctionName=ECHO.name, Payload=json.dumps({"sleep": 10}))
    assert answer["FunctionError"] == "Unhandled"
    assert json.loads(answer["Payload"].read())["errorType"] == "Sandbox.Timedout"
    # The next invocation starts a fresh worker and succeeds.
    answer = lambda_client.invoke(FunctionName=f"arn:aws:lambda:us-east-1:123456789012:function:{ECHO.name}")
    assert "FunctionError" not in answer


def test_configuration_names_the_handler_and_environment(lambda_client) -> None:
    configuration = lambda_client.get_function_configuration(FunctionName=ECHO.name)
    assert configuration["Handler"] == ECHO.handler
    assert configuration["Environment"]["Variables"] == {"DRUGSYNC_RANGE_SIZE": "500"}
    assert configuration["Timeout"] == 3
    assert configuration["MemorySize"] == 1024


def test_an_unknown_function_is_resource_not_found(lambda_client) -> None:
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName="drugsync-local-nothing")
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.get_function_configuration(FunctionName="drugsync-local-nothing")


def test_a_body_that_is_not_json_is_refused(lambda_client) -> None:
    with pytest.raises(lambda_client.exceptions.InvalidRequestContentException):
        lambda_client.invoke(FunctionName=ECHO.name, Payload=b"{not json")


def test_function_names_and_arns_reduce_to_the_name() -> None:
    assert function_name("f") == "f"
    assert function_name("f:live") == "f"
    assert function_name("arn:aws:lambda:us-east-1:1:function:f:live") == "f"


def test_a_function_sees_its_own_environment_and_lambdas_not_the_parents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an API process whose environment holds a Redis URL with a token and a stray setting
    monkeypatch.setenv("REDIS_URL", "redis://:tok9secret@parent:6379/0")
    monkeypatch.setenv("DRUGSYNC_KEY_PREFIX", "stray:")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    function = LocalFunction(
        "drugsync-local-env", "tests/unit/event_source_handlers.environment", 10, {"DRUGSYNC_RANGE_SIZE": "7"}
    )

    # WHEN a handler served by the local Lambda API reads its environment
    with _served(function) as client:
        seen = json.loads(client.invoke(FunctionName=function.name)["Payload"].read())

    # THEN it has its function's variables and what Lambda provides, and nothing else of the parent's
    assert "REDIS_URL" not in seen
    assert "DRUGSYNC_KEY_PREFIX" not in seen
    assert seen["DRUGSYNC_RANGE_SIZE"] == "7"
    assert seen["AWS_LAMBDA_FUNCTION_NAME"] == function.name
    assert seen["LAMBDA_TASK_ROOT"] == str(PROJECT_ROOT)
    assert seen["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert not {name for name in seen if name.startswith("PYTEST") or name.startswith("DRUGSYNC_CACHE")}


def test_a_second_concurrent_invoke_over_the_reserved_concurrency_is_throttled(lambda_client) -> None:
    # GIVEN a function with reserved concurrency 1, busy with a slow invocation
    slow = threading.Thread(
        target=lambda_client.invoke, kwargs={"FunctionName": SINGLE.name, "Payload": json.dumps({"sleep": 3})}
    )
    slow.start()
    time.sleep(1.0)

    # WHEN a second synchronous invoke arrives
    with pytest.raises(lambda_client.exceptions.TooManyRequestsException) as throttled:
        lambda_client.invoke(FunctionName=SINGLE.name, Payload=json.dumps({}))

    # THEN it is refused as Lambda refuses it, not queued behind the first; once free, it runs
    error = throttled.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    slow.join()
    assert "FunctionError" not in lambda_client.invoke(FunctionName=SINGLE.name, Payload=json.dumps({}))


def test_an_asynchronous_event_waits_for_the_reserved_concurrency(lambda_client, tmp_path: Path) -> None:
    # GIVEN the single-concurrency function busy
    slow = threading.Thread(
        target=lambda_client.invoke, kwargs={"FunctionName": SINGLE.name, "Payload": json.dumps({"sleep": 2})}
    )
    slow.start()
    time.sleep(0.5)

    # WHEN an Event invocation arrives
    trace = tmp_path / "ran"
    event = json.dumps({"touch": str(trace)})
    answer = lambda_client.invoke(FunctionName=SINGLE.name, InvocationType="Event", Payload=event)

    # THEN it is accepted and runs once the first is done (Lambda queues it and retries while throttled)
    assert answer["StatusCode"] == 202
    slow.join()
    deadline = time.monotonic() + 30  # a cold start on a loaded machine can take seconds
    while not trace.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert trace.read_text() == SINGLE.name


def test_a_missing_module_is_reported_as_lambda_reports_it(lambda_client) -> None:
    answer = lambda_client.invoke(FunctionName=BROKEN.name)
    assert answer["FunctionError"] == "Unhandled"
    assert json.loads(answer["Payload"].read()) == {
        "errorType": "Runtime.ImportModuleError",
        "errorMessage": "Unable to import module 'tests/unit/import_failure_handler':"
        " No module named 'no_such_dependency'",
    }


def test_the_local_functions_reserve_the_concurrency_serverless_yml_reserves() -> None:
    template = json.loads((Path(__file__).parents[1] / "data" / "compiled-template.json").read_text())
    reserved = {
        resource["Properties"]["Handler"]: resource["Properties"]["ReservedConcurrentExecutions"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Lambda::Function"
    }
    assert {
        f.handler: f.reserved_concurrency for f in (local_deploy.PRODUCER, local_deploy.CONSUMER)
    } == reserved
