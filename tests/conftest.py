"""The real embedded servers, started once per test session; each test gets its own names."""

import json
import os
import platform
import sys
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from console import local_stack
from console.local_deploy import database_secret
from console.local_stack import QueueOptions, StackState
from infra.package import ARCHES, build, configured_target, incomplete_run, record_tested
from shared.ledger import PostgresLedger
from shared.postgres import Database
from shared.settings import Settings, get_settings

_deselected: list[pytest.Item] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.extend(items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under `make test` (DRUGSYNC_RECORD_TESTED=1), record what was tested, and only after every
    test of tests/ ran and passed: `make deploy` ships nothing else."""
    if os.environ.get("DRUGSYNC_RECORD_TESTED") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    paths = [Path(arg.split("::")[0]) for arg in session.config.args]
    reasons = incomplete_run(int(exitstatus), paths, len(_deselected), skipped)
    reasons = reasons or record_tested("end", *configured_target())
    if reporter is not None:
        reporter.write_line(
            f"not recorded as tested: {'; '.join(reasons)}" if reasons else "recorded as tested"
        )
    if reasons and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


OUTSIDE_URLS = (
    "DATABASE_URL",
    "REDIS_URL",
    "QUEUE_URL",
    "DLQ_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_LAMBDA",
)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackState]:
    """PostgreSQL, Redis Stack and a moto SQS server, as `drugsync local up` starts them."""
    with pytest.MonkeyPatch.context() as patch:
        for name in OUTSIDE_URLS:
            patch.delenv(name, raising=False)
        patch.setenv("DRUGSYNC_STATE_DIR", str(tmp_path_factory.mktemp("stack")))
        state = local_stack.up()
        assert set(state.started) == {"postgres", "redis", "sqs", "lambda"}, (
            "the real servers must run, not be skipped"
        )
        try:
            yield state
        finally:
            local_stack.stop(state)


@dataclass(frozen=True)
class Isolated:
    """Names unique to one test, and the environment that points a process at them."""

    settings: Settings
    env: dict[str, str]


def make_queues(stack: StackState, visibility_timeout: int, max_receive_count: int) -> dict[str, str]:
    """A fresh work queue and DLQ (needs the stack's AWS_* variables in the environment)."""
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    options = QueueOptions(visibility_timeout, max_receive_count)
    return local_stack.create_queues(stack.env["AWS_ENDPOINT_URL"], options, prefix)


@pytest.fixture
def test_env(stack: StackState, monkeypatch: pytest.MonkeyPatch) -> Iterator[Isolated]:
    """Settings and environment for one test: its own table, key prefix, index and queues."""
    yield from isolate(stack, monkeypatch, visibility_timeout=60)


@pytest.fixture
def fragile_env(stack: StackState, monkeypatch: pytest.MonkeyPatch) -> Iterator[Isolated]:
    """Like test_env, but a failed message is visible again after 2 s and dead-lettered on its 2nd receive."""
    yield from isolate(stack, monkeypatch, visibility_timeout=2)


def isolate(
    stack: StackState,
    monkeypatch: pytest.MonkeyPatch,
    visibility_timeout: int,
    max_receive_count: int = 2,
    **extra_env: str,
) -> Iterator[Isolated]:
    """Point this process (and the workers it spawns) at names no other test uses."""
    tag = uuid.uuid4().hex[:8]
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    queues = make_queues(stack, visibility_timeout=visibility_timeout, max_receive_count=max_receive_count)
    env = {
        **stack.env,
        **queues,
        "DRUGSYNC_TABLE": f"drugs_{tag}",
        "DRUGSYNC_KEY_PREFIX": f"t{tag}:drug:",
        "DRUGSYNC_INDEX_NAME": f"idx:t{tag}",
        "DRUGSYNC_EMBEDDING_DIM": "128",
        **extra_env,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    end_earlier_runs(env["DATABASE_URL"])
    get_settings.cache_clear()
    yield Isolated(settings=get_settings(), env=env)
    get_settings.cache_clear()


# Tests share the stack's one ledger; a run an earlier test left unfinished (on purpose: killed,
# stalled, half consumed) would hold the one-writer claim against every test after it.
END_EARLIER_RUNS = """
UPDATE drugsync_runs SET superseded_at = now()
WHERE finished_at IS NULL AND superseded_at IS NULL
"""


def end_earlier_runs(database_url: str) -> None:
    """Supersede every run still active in the shared ledger, as a `--supersede` would."""
    db = Database(database_url)
    try:
        PostgresLedger(db).ensure_schema()
        db.connection().execute(END_EARLIER_RUNS)
    finally:
        db.close()


@pytest.fixture
def sqs(stack: StackState):
    return boto3.client(
        "sqs",
        endpoint_url=stack.env["AWS_ENDPOINT_URL"],
        region_name=local_stack.LOCAL_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass(frozen=True)
class BuiltArtefact:
    """The Lambda zip built for THIS machine's Python and architecture, and its unpacked folder."""

    zip_path: Path
    folder: Path
    python_version: str
    arch: str


@pytest.fixture(scope="session")
def this_machine_artefact(tmp_path_factory: pytest.TempPathFactory) -> BuiltArtefact:
    """Built once per session (pip takes a few seconds per build): importable here, unlike dist's."""
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    arch = {machine: arch for arch, machine in ARCHES.items()}[platform.machine()]
    root = tmp_path_factory.mktemp("artefact")
    artefact = build(root / "drugsync-lambda.zip", python_version, arch)
    zipfile.ZipFile(artefact.path).extractall(root / "task")
    return BuiltArtefact(artefact.path, root / "task", python_version, arch)


def aws_client(stack: StackState, service: Any) -> Any:
    """A boto3 client of the stack's moto server (it serves every AWS API moto knows, not only SQS)."""
    return boto3.client(
        service,
        endpoint_url=stack.env["AWS_ENDPOINT_URL"],
        region_name=local_stack.LOCAL_REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def store_local_secrets(stack: StackState, tag: str) -> tuple[str, str]:
    """(database, Redis) secret ARNs in the moto server, holding the local servers as RDS would
    (the database as the local stack stores it; Redis in the fields shape, not the local stack's URL)."""
    secrets = aws_client(stack, "secretsmanager")
    database = database_secret(stack.env["DATABASE_URL"])
    redis_address = urlsplit(stack.env["REDIS_URL"])
    redis_fields = {"host": redis_address.hostname, "port": redis_address.port, "tls": False}
    return (
        secrets.create_secret(Name=f"{tag}-db", SecretString=json.dumps(database))["ARN"],
        secrets.create_secret(Name=f"{tag}-redis", SecretString=json.dumps(redis_fields))["ARN"],
    )
