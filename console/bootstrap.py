"""A local Lambda runtime: import one handler once (the cold start), then run events one at a time.

    python [-S] -P console/bootstrap.py MODULE:FUNCTION|PATH/MODULE.FUNCTION FD

Run as a fresh interpreter with the code folder on PYTHONPATH: the project tree, or an unpacked
artefact with -S (nothing but the artefact, as in Lambda's /var/task). Standard library only, so
that it runs beside an artefact. Requests and responses travel as JSON lines over the socket FD,
never stdout: handlers log to stdout, as on Lambda.
"""

import importlib
import json
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class LocalLambdaContext:
    """The attributes powertools and handlers read from Lambda's context, with a real deadline."""

    function_name: str = "drugsync-consumer"
    timeout_seconds: float = 60.0
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/drugsync-consumer"
    log_stream_name: str = "local"
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class InitFailure(Exception):
    """The function's init failed the way Lambda's Python runtime reports it (errorType, errorMessage).
    https://github.com/aws/aws-lambda-python-runtime-interface-client (bootstrap.py, _get_handler)"""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error = {"errorType": error_type, "errorMessage": message}


def load_handler(handler: str) -> Any:
    """`module:function`, or Lambda's `path/module.function`; errors named as Lambda names them."""
    module_name, separator, function_name = handler.rpartition(":" if ":" in handler else ".")
    if not separator or not module_name:
        raise InitFailure(
            "Runtime.MalformedHandlerName", f"Bad handler '{handler}': not enough values to unpack"
        )
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as error:
        raise InitFailure(
            "Runtime.ImportModuleError", f"Unable to import module '{module_name}': {error}"
        ) from error
    except SyntaxError as error:
        raise InitFailure(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {error}"
        ) from error
    except Exception as error:  # the module's own code raised: Lambda reports the exception itself
        raise InitFailure(type(error).__name__, str(error)) from error
    if not hasattr(module, function_name):
        raise InitFailure(
            "Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'"
        )
    return getattr(module, function_name)


def invoke(function: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One invocation: the handler's response, or the error it raised (logged, as Lambda does)."""
    context = LocalLambdaContext(function_name=request["function_name"], timeout_seconds=request["timeout"])
    try:
        response = function(request["event"], context)
    except Exception as error:
        traceback.print_exc()
        return {"error": {"errorType": type(error).__name__, "errorMessage": str(error)}}
    try:
        json.dumps(response)
    except (TypeError, ValueError) as error:  # Lambda refuses a response it cannot serialise
        return {
            "error": {
                "errorType": "Runtime.MarshalError",
                "errorMessage": f"Unable to marshal response: {error}",
            }
        }
    return {"response": response}


def serve(handler: str, channel: socket.socket) -> int:
    reader = channel.makefile("r", encoding="utf-8")
    started = time.perf_counter()
    try:
        function = load_handler(handler)
    except InitFailure as failure:
        traceback.print_exc()
        _send(channel, {"init_error": failure.error})
        return 1
    init_ms = (time.perf_counter() - started) * 1000
    print(json.dumps(_init_report(handler, init_ms)), file=sys.stderr, flush=True)
    _send(channel, {"ready": True, "init_ms": init_ms})
    for line in reader:
        _send(channel, invoke(function, json.loads(line)))
        sys.stdout.flush()
    return 0


def _init_report(handler: str, init_ms: float) -> dict[str, Any]:
    """Lambda's platform.initReport log event (JSON log format): the cold start's Init Duration.
    https://docs.aws.amazon.com/lambda/latest/dg/telemetry-schema-reference.html#platform-initReport"""
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "type": "platform.initReport",
        "record": {"initializationType": "on-demand", "phase": "init", "handler": handler,
                   "status": "success", "metrics": {"durationMs": round(init_ms, 3)}},
    }  # fmt: skip


def _send(channel: socket.socket, message: dict[str, Any]) -> None:
    channel.sendall(json.dumps(message).encode() + b"\n")


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], socket.socket(fileno=int(sys.argv[2]))))
