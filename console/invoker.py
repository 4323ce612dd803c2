"""Warm 'containers' for local invocations: fresh interpreters running console/bootstrap.py.

Like Lambda, an invocation that overruns the function timeout is killed (SIGKILL) and the next
invocation starts a fresh process (a cold start). The same bootstrap serves the project tree and
an unpacked artefact: only the code folder and whether site-packages is visible differ.
"""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from console.paths import PROJECT_ROOT
from shared.models import SyncRequest

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
INIT_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class CodeSource:
    """Where handlers are imported from (the project tree with the venv, or an artefact folder alone),
    and the environment their process gets."""

    folder: Path = PROJECT_ROOT
    isolated: bool = False  # python -S: no site-packages, only what the folder holds (Lambda's /var/task)
    # None: this process's environment (`drugsync work` and `sync --code` run with the operator's
    # settings, as documented); otherwise exactly these variables, as a deployed function gets.
    env: Mapping[str, str] | None = field(default=None, compare=False)

    @classmethod
    def artefact(cls, folder: str | Path) -> "CodeSource":
        return cls(Path(folder).resolve(), isolated=True)

    def command(self, handler: str, fd: int) -> list[str]:
        # -P: the bootstrap's own folder (console/) stays off sys.path; -u: logs survive a SIGKILL.
        flags = ["-S", "-P", "-u"] if self.isolated else ["-P", "-u"]
        return [sys.executable, *flags, str(BOOTSTRAP), handler, str(fd)]

    def environment(self) -> dict[str, str]:
        return {**(os.environ if self.env is None else self.env), "PYTHONPATH": str(self.folder)}


@dataclass(frozen=True)
class InvocationResult:
    """What one invocation returned, or how it ended without returning (Lambda's errorType/errorMessage)."""

    response: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None
    timed_out: bool = False

    @property
    def error(self) -> str | None:
        return None if self.error_type is None else f"{self.error_type}: {self.error_message}"


class _Channel:
    """JSON lines over a socket, each read with a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self, timeout_seconds: float) -> dict[str, Any]:
        """The next message; TimeoutError past the deadline, EOFError if the process went away."""
        deadline = time.monotonic() + timeout_seconds
        while b"\n" not in self._buffer:
            self._sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self._sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def close(self) -> None:
        self._sock.close()


class InvocationWorker:
    """One process running `module:function` handlers; restarted after a kill or crash."""

    def __init__(
        self,
        handler: str,
        function_name: str,
        log_path: str | None = None,
        code: CodeSource | None = None,
        logs_to_stderr: bool = False,  # keep this process's stdout for its own output
    ) -> None:
        self._handler = handler
        self._logs_to_stderr = logs_to_stderr
        self._function_name = function_name
        self._log_path = log_path
        self._code = code or CodeSource()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: _Channel | None = None
        self.cold_starts = 0
        self.init_ms: list[float] = []  # each cold start's import time, as Lambda's Init Duration
        self.busy = False

    def _ensure_started(self) -> _Channel:
        if self._process is not None and self._process.poll() is None and self._channel is not None:
            return self._channel
        self.kill()
        parent, child = socket.socketpair()
        log: IO[str] | None = open(self._log_path, "a") if self._log_path else None  # noqa: SIM115
        stdout = log or (sys.stderr if self._logs_to_stderr else None)
        try:
            self._process = subprocess.Popen(
                self._code.command(self._handler, child.fileno()), env=self._code.environment(),
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
            )  # fmt: skip
        finally:
            child.close()
            if log is not None:
                log.close()
        self._channel = _Channel(parent)
        # Lambda runs a function's init (imports, clients) before the invocation's timeout starts.
        try:
            ready = self._channel.receive(INIT_TIMEOUT_SECONDS)
        except TimeoutError:
            message = f"{self._handler} did not initialise within {INIT_TIMEOUT_SECONDS}s"
            raise HandlerInitError("Sandbox.Timedout", message) from None
        except (EOFError, OSError):
            message = f"{self._handler} exited during its init (see its log)"
            raise HandlerInitError("Runtime.ExitError", message) from None
        if "init_error" in ready:
            raise HandlerInitError(ready["init_error"]["errorType"], ready["init_error"]["errorMessage"])
        self.cold_starts += 1
        self.init_ms.append(float(ready["init_ms"]))
        return self._channel

    def warm(self) -> None:
        """Start the process and run its init now rather than at the first invocation (as Lambda's
        provisioned concurrency does); HandlerInitError if the init fails."""
        try:
            self._ensure_started()
        except HandlerInitError:
            self.kill()
            raise

    @property
    def pid(self) -> int | None:
        """The process running invocations now (None before the first or after a kill)."""
        return self._process.pid if self._process is not None else None

    def invoke(self, event: dict[str, Any], timeout_seconds: float) -> InvocationResult:
        try:
            channel = self._ensure_started()
        except HandlerInitError as error:
            self.kill()
            return InvocationResult(error_type=error.error_type, error_message=error.message)
        self.busy = True
        try:
            channel.send({"event": event, "function_name": self._function_name, "timeout": timeout_seconds})
            reply = channel.receive(timeout_seconds)
        except TimeoutError:
            self.kill()
            message = f"Task timed out after {timeout_seconds:.2f} seconds"
            return InvocationResult(timed_out=True, error_type="Sandbox.Timedout", error_message=message)
        except (EOFError, OSError):
            self.kill()
            message = "the invocation's process exited without a response"
            return InvocationResult(error_type="Runtime.ExitError", error_message=message)
        finally:
            self.busy = False
        if "response" in reply:
            return InvocationResult(response=reply["response"])
        return InvocationResult(
            error_type=reply["error"]["errorType"], error_message=reply["error"]["errorMessage"]
        )

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            self._process.wait(5)
        if self._channel is not None:
            self._channel.close()
        self._process = None
        self._channel = None

    def close(self) -> None:
        self.kill()


PRODUCER_HANDLER = "producer/handler.lambda_handler"  # as serverless.yml names it
PRODUCER_TIMEOUT_SECONDS = 300.0  # serverless.yml's producer timeout


def invoke_producer(code: str | Path, request: SyncRequest) -> tuple[InvocationResult, float | None]:
    """One cold invocation of the producer handler from an unpacked artefact: (result, init ms)."""
    code_source = CodeSource.artefact(code)
    worker = InvocationWorker(PRODUCER_HANDLER, "drugsync-producer", code=code_source, logs_to_stderr=True)
    try:
        result = worker.invoke(request.model_dump(mode="json", exclude_none=True), PRODUCER_TIMEOUT_SECONDS)
    finally:
        worker.close()
    return result, worker.init_ms[0] if worker.init_ms else None


class HandlerInitError(RuntimeError):
    """The function's init failed: its module did not import (Runtime.ImportModuleError), raised,
    lacked the handler, or the process went away; with Lambda's errorType."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
