"""Warm 'containers' for local invocations: child processes that run a handler one event at a time.

Like Lambda, an invocation that overruns the function timeout is killed (SIGKILL) and the next
invocation starts a fresh process (a cold start).
"""

import importlib
import multiprocessing
import os
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from console.lambda_context import LocalLambdaContext

# spawn, not fork: the parent may hold threads (boto3, a moto server) that fork would copy broken.
_MP = multiprocessing.get_context("spawn")
INIT_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class InvocationResult:
    """What one invocation returned, or how it ended without returning."""

    response: dict[str, Any] | None = None
    error: str | None = None
    timed_out: bool = False


class InvocationWorker:
    """One child process running `module:function` handlers; restarted after a kill or crash."""

    def __init__(self, handler: str, function_name: str, log_path: str | None = None) -> None:
        self._handler = handler
        self._function_name = function_name
        self._log_path = log_path
        self._process: Any = None
        self._conn: Connection | None = None
        self.cold_starts = 0
        self.busy = False

    def _ensure_started(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        parent, child = _MP.Pipe()
        self._process = _MP.Process(target=_serve, args=(child, self._handler, self._log_path), daemon=True)
        self._process.start()
        child.close()
        # Lambda runs a function's init (imports, clients) before the invocation's timeout starts.
        if not parent.poll(INIT_TIMEOUT_SECONDS) or parent.recv() != "ready":
            self.kill()
            raise RuntimeError(f"{self._handler} did not initialise within {INIT_TIMEOUT_SECONDS}s")
        self._conn = parent
        self.cold_starts += 1
        return parent

    @property
    def pid(self) -> int | None:
        """The process running invocations now (None before the first or after a kill)."""
        return self._process.pid if self._process is not None else None

    def invoke(self, event: dict[str, Any], timeout_seconds: float) -> InvocationResult:
        conn = self._ensure_started()
        self.busy = True
        try:
            conn.send((event, self._function_name, timeout_seconds))
            if not conn.poll(timeout_seconds):
                self.kill()
                return InvocationResult(timed_out=True, error=f"timed out after {timeout_seconds:.1f}s")
            status, payload = conn.recv()
        except (EOFError, OSError):
            self.kill()
            return InvocationResult(error="the invocation's process exited without a response")
        finally:
            self.busy = False
        if status == "ok":
            return InvocationResult(response=payload)
        return InvocationResult(error=payload)

    def kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        if self._conn is not None:
            self._conn.close()
        self._process = None
        self._conn = None

    def close(self) -> None:
        self.kill()


def _serve(conn: Connection, handler: str, log_path: str | None) -> None:
    """Child process: import the handler once (the cold start), then run events as they come."""
    if log_path:
        log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
    module_name, function_name = handler.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    conn.send("ready")
    while True:
        try:
            event, name, timeout_seconds = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        context = LocalLambdaContext(function_name=name, timeout_seconds=timeout_seconds)
        try:
            conn.send(("ok", function(event, context)))
        except Exception as error:
            traceback.print_exc()
            conn.send(("error", f"{type(error).__name__}: {error}"))
