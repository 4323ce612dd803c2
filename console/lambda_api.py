"""A local Lambda API: Invoke and GetFunctionConfiguration for the local stack's functions.

`drugsync sync --stack NAME` invokes the deployed producer through boto3's Lambda client. On the
local stack that client is pointed here (AWS_ENDPOINT_URL_LAMBDA), so the same code path runs: the
request is the Lambda REST API's, the handler runs in a warm worker process with a real deadline,
and a failure comes back the way Lambda reports it (200 with X-Amz-Function-Error).
https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html

    python -m console.lambda_api --port P --functions FILE [--log FILE]
"""

import argparse
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from console.invoker import InvocationResult, InvocationWorker

API_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/(?P<action>invocations|configuration)/?$")
Response = tuple[int, dict[str, str], dict[str, Any] | None]


@dataclass(frozen=True)
class LocalFunction:
    """One function as serverless.yml declares it: handler `path/module.function`, timeout, environment."""

    name: str
    handler: str
    timeout_seconds: float
    environment: dict[str, str] = field(default_factory=dict)
    runtime: str = "python3.12"

    @property
    def entry_point(self) -> str:
        """The handler as the local worker names it: `package.module:function`."""
        module, _, function = self.handler.rpartition(".")
        return f"{module.replace('/', '.')}:{function}"

    def configuration(self) -> dict[str, Any]:
        return {
            "FunctionName": self.name,
            "FunctionArn": f"arn:aws:lambda:us-east-1:123456789012:function:{self.name}",
            "Handler": self.handler,
            "Runtime": self.runtime,
            "Timeout": int(self.timeout_seconds),
            "Environment": {"Variables": dict(self.environment)},
        }


def load_functions(path: Path) -> dict[str, LocalFunction]:
    return {entry["name"]: LocalFunction(**entry) for entry in json.loads(path.read_text())}


def shared_environment(functions: Iterable[LocalFunction]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for function in functions:
        for key, value in function.environment.items():
            if merged.setdefault(key, value) != value:
                raise ValueError(f"functions disagree on {key}: one environment serves them all here")
    return merged


def function_name(name_or_arn: str) -> str:
    """`NAME`, `NAME:QUALIFIER` or an ARN, as Invoke accepts them, reduced to the name."""
    parts = name_or_arn.split(":")
    return parts[6] if name_or_arn.startswith("arn:") and len(parts) > 6 else parts[0]


class LambdaApi:
    """The functions and a warm worker for each; one invocation of a function at a time."""

    def __init__(self, functions: dict[str, LocalFunction], log_path: str | None = None) -> None:
        self._functions = functions
        self._workers = {
            name: InvocationWorker(function.entry_point, name, log_path)
            for name, function in functions.items()
        }
        self._locks = {name: threading.Lock() for name in functions}

    def configuration(self, name: str) -> Response:
        function = self._functions.get(function_name(name))
        if function is None:
            return _not_found(name)
        return 200, {}, function.configuration()

    def invoke(self, name: str, body: bytes, invocation_type: str) -> Response:
        function = self._functions.get(function_name(name))
        if function is None:
            return _not_found(name)
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            return _error(400, "InvalidRequestContentException", "Could not parse request body into json")
        if invocation_type == "DryRun":
            return 204, {}, None
        if invocation_type == "Event":
            threading.Thread(target=self._run, args=(function, event), daemon=True).start()
            return 202, {}, None
        return self._respond(function, self._run(function, event))

    def _run(self, function: LocalFunction, event: Any) -> InvocationResult:
        with self._locks[function.name]:
            return self._workers[function.name].invoke(event, function.timeout_seconds)

    @staticmethod
    def _respond(function: LocalFunction, result: InvocationResult) -> Response:
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if result.timed_out:
            message = f"Task timed out after {function.timeout_seconds:.2f} seconds"
            payload = {"errorType": "Sandbox.Timedout", "errorMessage": message}
            return 200, {**headers, "X-Amz-Function-Error": "Unhandled"}, payload
        if result.error is not None:
            error_type, _, message = result.error.partition(": ")
            payload = {"errorType": error_type, "errorMessage": message or result.error}
            return 200, {**headers, "X-Amz-Function-Error": "Unhandled"}, payload
        return 200, headers, result.response

    def close(self) -> None:
        for worker in self._workers.values():
            worker.close()


def _error(status: int, error_type: str, message: str) -> Response:
    return status, {"x-amzn-ErrorType": error_type}, {"Type": "User", "message": message}


def _not_found(name: str) -> Response:
    return _error(404, "ResourceNotFoundException", f"Function not found: {name}")


def serve(api: LambdaApi, port: int) -> ThreadingHTTPServer:
    """Serve the API on 127.0.0.1:port in a background thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def _answer(self, method: str) -> None:
            route = API_PATH.match(unquote(self.path.split("?")[0]))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if route is None or (method, route["action"]) not in (
                ("POST", "invocations"),
                ("GET", "configuration"),
            ):
                status, headers, payload = _error(404, "UnknownOperationException", self.path)
            elif route["action"] == "configuration":
                status, headers, payload = api.configuration(route["name"])
            else:
                kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                status, headers, payload = api.invoke(route["name"], body, kind)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            for key, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logging.getLogger("lambda_api").debug(format, *args)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--functions", type=Path, required=True, help="JSON list of functions")
    parser.add_argument("--log", help="append the functions' logs here")
    args = parser.parse_args()
    functions = load_functions(args.functions)
    # Workers inherit this process's environment, so the functions must share one (as they do in
    # serverless.yml, where it is the provider's).
    os.environ.update(shared_environment(functions.values()))
    api = LambdaApi(functions, args.log)
    server = serve(api, args.port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.shutdown()
    server.server_close()
    api.close()


if __name__ == "__main__":
    main()
