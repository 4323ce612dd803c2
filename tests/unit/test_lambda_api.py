"""The local Lambda API answers boto3's Lambda client the way Lambda does."""

import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from console.lambda_api import LambdaApi, LocalFunction, function_name, serve, shared_environment
from console.local_stack import free_port

ECHO = LocalFunction(
    name="drugsync-local-producer",
    handler="tests/unit/event_source_handlers.echo",
    timeout_seconds=3,
    environment={"DRUGSYNC_RANGE_SIZE": "500"},
)


@pytest.fixture(scope="module")
def lambda_client() -> Iterator[object]:
    api = LambdaApi({ECHO.name: ECHO})
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


def test_functions_must_share_one_environment() -> None:
    other = LocalFunction("c", "consumer/handler.lambda_handler", 60, {"DRUGSYNC_RANGE_SIZE": "1000"})
    with pytest.raises(ValueError, match="DRUGSYNC_RANGE_SIZE"):
        shared_environment([ECHO, other])
