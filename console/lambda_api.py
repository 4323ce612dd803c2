"""A local Lambda API: Invoke and GetFunctionConfiguration for the local stack's functions.

`drugsync sync --stack NAME` invokes the deployed producer through boto3's Lambda client. On the
local stack that client is pointed here (AWS_ENDPOINT_URL_LAMBDA), so the same code path runs: the
request is the Lambda REST API's, the handler runs in a warm worker process with a real deadline
and only its function's environment plus what Lambda itself sets (nothing else of this process's),
at most reserved-concurrency invocations run at once (a synchronous one beyond gets 429), and a
failure comes back the way Lambda reports it (200 with X-Amz-Function-Error, Lambda's errorType).
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from console.invoker import CodeSource, InvocationResult, InvocationWorker
from console.paths import PROJECT_ROOT

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
    # At most this many invocations at once, as reservedConcurrency caps it; None: unreserved.
    reserved_concurrency: int | None = None
    memory_mb: int = 1024

    def configuration(self) -> dict[str, Any]:
        return {
            "FunctionName": self.name,
            "FunctionArn": f"arn:aws:lambda:us-east-1:123456789012:function:{self.name}",
            "Handler": self.handler,
            "Runtime": self.runtime,
            "Timeout": int(self.timeout_seconds),
            "MemorySize": self.memory_mb,
            "Environment": {"Variables": dict(self.environment)},
        }

    def process_environment(self, parent: Mapping[str, str], task_root: Path) -> dict[str, str]:
        """What the function's process sees: its own variables and what Lambda itself sets, nothing
        else of `parent` (a stray REDIS_URL in the operator's shell must not reach a function).
        https://docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime"""
        provided = {name: value for name, value in parent.items() if _lambda_provides(name)}
        region = parent.get("AWS_REGION") or parent.get("AWS_DEFAULT_REGION") or "us-east-1"
        return {
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            **provided,
            **self.environment,
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{self.runtime}",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "LAMBDA_TASK_ROOT": str(task_root),
        }


# From the API's own environment, what Lambda gives every function: the path, the locale, and the
# credentials, region and endpoint of the (local) account the function runs in.
_PROVIDED = frozenset(
    {"PATH", "LANG", "TZ", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
     "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"}
)  # fmt: skip


def _lambda_provides(name: str) -> bool:
    return name in _PROVIDED or name.startswith("AWS_ENDPOINT_URL_")


def load_functions(path: Path) -> dict[str, LocalFunction]:
    return {entry["name"]: LocalFunction(**entry) for entry in json.loads(path.read_text())}


def function_name(name_or_arn: str) -> str:
    """`NAME`, `NAME:QUALIFIER` or an ARN, as Invoke accepts them, reduced to the name."""
    parts = name_or_arn.split(":")
    return parts[6] if name_or_arn.startswith("arn:") and len(parts) > 6 else parts[0]


class _Workers:
    """A function's warm workers: at most its reserved concurrency run at once, each one event at a time."""

    def __init__(self, function: LocalFunction, code: CodeSource, log_path: str | None) -> None:
        self._function = function
        self._code = code
        self._log_path = log_path
        self._idle: list[InvocationWorker] = []
        self._all: list[InvocationWorker] = []
        self._freed = threading.Condition()

    def acquire(self, wait: bool) -> InvocationWorker | None:
        """An idle worker, a new one under the limit; else None, or wait for one if `wait`."""
        limit = self._function.reserved_concurrency
        with self._freed:
            while not self._idle and limit is not None and len(self._all) >= limit:
                if not wait:
                    return None
                self._freed.wait()
            if self._idle:
                return self._idle.pop()
            worker = InvocationWorker(self._function.handler, self._function.name, self._log_path, self._code)
            self._all.append(worker)
            return worker

    def release(self, worker: InvocationWorker) -> None:
        with self._freed:
            self._idle.append(worker)
            self._freed.notify()

    def close(self) -> None:
        for worker in self._all:
            worker.close()


class LambdaApi:
    """The functions, each with its warm workers, code folder and own environment."""

    def __init__(
        self,
        functions: dict[str, LocalFunction],
        log_path: str | None = None,
        folder: Path = PROJECT_ROOT,
        parent: Mapping[str, str] | None = None,  # where Lambda's own variables come from
    ) -> None:
        self._functions = functions
        given = os.environ if parent is None else parent
        self._workers = {
            name: _Workers(
                function, CodeSource(folder, env=function.process_environment(given, folder)), log_path
            )
            for name, function in functions.items()
        }

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
            # Lambda queues an asynchronous event and retries it while the function is throttled.
            threading.Thread(target=self._run, args=(function, event, True), daemon=True).start()
            return 202, {}, None
        result = self._run(function, event, wait=False)
        return _throttled() if result is None else self._respond(result)

    def _run(self, function: LocalFunction, event: Any, wait: bool) -> InvocationResult | None:
        workers = self._workers[function.name]
        worker = workers.acquire(wait)
        if worker is None:
            return None
        try:
            return worker.invoke(event, function.timeout_seconds)
        finally:
            workers.release(worker)

    @staticmethod
    def _respond(result: InvocationResult) -> Response:
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if result.error_type is not None:
            payload = {"errorType": result.error_type, "errorMessage": result.error_message}
            return 200, {**headers, "X-Amz-Function-Error": "Unhandled"}, payload
        return 200, headers, result.response

    def close(self) -> None:
        for workers in self._workers.values():
            workers.close()


def _throttled() -> Response:
    """What a synchronous Invoke gets when every unit of reserved concurrency is busy.
    https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html#API_Invoke_Errors"""
    status, headers, payload = _error(429, "TooManyRequestsException", "Rate Exceeded.")
    return status, headers, {**(payload or {}), "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}


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
    api = LambdaApi(load_functions(args.functions), args.log)
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
