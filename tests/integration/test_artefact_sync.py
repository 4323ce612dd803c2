"""A real sync where both handlers come from the unpacked artefact ONLY, as Lambda would run them.

`drugsync sync --code DIR` and `drugsync work --code DIR` run the producer and the consumer in
`python -S` bootstraps whose only code folder is the artefact: no project tree, no site-packages.
As deployed, they are given secret ARNs, not URLs: boto3 and the secrets path run from the zip.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from console.local_stack import StackState
from tests.conftest import BuiltArtefact, Isolated, store_local_secrets

pytestmark = pytest.mark.integration
DRUGS = 300
CONNECTION_URLS = ("DATABASE_URL", "DRUGSYNC_DATABASE_URL", "REDIS_URL", "DRUGSYNC_REDIS_URL")


def drugsync(
    env: Isolated, *args: str, secrets: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI; with `secrets`, Postgres and Redis are named by secret ARNs alone, as on Lambda."""
    environment = {**os.environ, **env.env}
    if secrets is not None:
        environment = {k: v for k, v in environment.items() if k not in CONNECTION_URLS} | secrets
    return subprocess.run(
        [sys.executable, "-m", "console.cli", *args], env=environment,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture
def secret_arns(stack: StackState) -> dict[str, str]:
    """The local database and Redis as secrets in the moto server the handlers reach."""
    database_arn, redis_arn = store_local_secrets(stack, f"t{uuid.uuid4().hex[:8]}")
    return {"DRUGSYNC_DATABASE_SECRET_ARN": database_arn, "DRUGSYNC_REDIS_SECRET_ARN": redis_arn}


def test_a_sync_run_by_the_artefact_alone_completes(
    test_env: Isolated, this_machine_artefact: BuiltArtefact, tmp_path: Path, secret_arns: dict[str, str]
) -> None:
    # GIVEN a small seeded catalog
    seeded = drugsync(test_env, "seed", "--drugs", str(DRUGS))
    assert seeded.returncode == 0, seeded.stderr
    code = str(this_machine_artefact.folder)

    # WHEN the producer and then the consumers run from the artefact folder only, given secret ARNs
    synced = drugsync(test_env, "sync", "--range-size", "100", "--json", "--code", code, secrets=secret_arns)
    assert synced.returncode == 0, synced.stderr
    assert "init" in synced.stderr
    log = tmp_path / "log"
    worked = drugsync(
        test_env,
        "work",
        "--code",
        code,
        "--until-empty",
        "--wait",
        "0",
        "--log-file",
        str(log),
        secrets=secret_arns,
    )
    assert worked.returncode == 0, worked.stderr
    print(synced.stderr.strip(), "|", worked.stdout.strip())

    # THEN the run is complete and Redis holds exactly the eligible drugs
    summary = json.loads(synced.stdout)
    assert summary["eligible_drugs"] > DRUGS // 2
    status = json.loads(drugsync(test_env, "status", "--json").stdout)
    assert status["run"]["run_id"] == summary["run_id"]
    assert status["run"]["state"] == "complete", status
    report = drugsync(test_env, "verify", "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    counts = json.loads(report.stdout)
    assert counts["redis_documents"] == counts["index_documents"] == summary["eligible_drugs"]
    assert " 0 failed, 0 timed out, 0 errors" in worked.stdout


def test_an_artefact_missing_a_dependency_fails_at_import(
    test_env: Isolated, this_machine_artefact: BuiltArtefact, tmp_path: Path, secret_arns: dict[str, str]
) -> None:
    # GIVEN a copy of the artefact without the redis package (which the venv does have)
    broken = tmp_path / "task"
    shutil.copytree(this_machine_artefact.folder, broken)
    shutil.rmtree(broken / "redis")

    # WHEN the producer is invoked from it
    synced = drugsync(test_env, "sync", "--code", str(broken), secrets=secret_arns)

    # THEN its import fails as Lambda reports it, naming the missing module: the venv's was never reachable
    assert synced.returncode == 1
    expected = (
        "Runtime.ImportModuleError: Unable to import module 'producer/handler': No module named 'redis'"
    )
    assert expected in synced.stderr, synced.stderr


def test_consumers_from_an_artefact_missing_a_dependency_fail_at_import(
    fragile_env: Isolated, this_machine_artefact: BuiltArtefact, tmp_path: Path
) -> None:
    # GIVEN a run enqueued by the good artefact, and a copy of it without redis
    assert drugsync(fragile_env, "seed", "--drugs", "50").returncode == 0
    synced = drugsync(fragile_env, "sync", "--code", str(this_machine_artefact.folder))
    assert synced.returncode == 0, synced.stderr
    broken = tmp_path / "task"
    shutil.copytree(this_machine_artefact.folder, broken)
    shutil.rmtree(broken / "redis")

    # WHEN consumers run from the broken copy until its messages are dead-lettered
    log = tmp_path / "consumer.log"
    worked = drugsync(
        fragile_env, "work", "--code", str(broken), "--until-empty", "--wait", "0", "--log-file", str(log)
    )

    # THEN no record succeeded and every invocation failed at the consumer's import
    assert worked.returncode == 0, worked.stderr
    assert " 0 records ok," in worked.stdout, worked.stdout
    assert "0 errors" not in worked.stdout
    assert "ModuleNotFoundError: No module named 'redis'" in log.read_text()
