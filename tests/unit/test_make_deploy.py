"""`make deploy` deploys only what `make test` passed on, and checks the stage's own template first."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.package import incomplete_run

ROOT = Path(__file__).resolve().parents[2]
STAGE, PARAMS = "prod", '--param="subnetIds=subnet-a,subnet-b"'


def _dry_run(*args: str) -> list[str]:
    """The commands make would run, in order (make -n runs none of them)."""
    done = subprocess.run(
        ["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.splitlines()


def _position(lines: list[str], *words: str) -> int:
    matching = [index for index, line in enumerate(lines) if all(word in line for word in words)]
    assert len(matching) == 1, (words, lines)
    return matching[0]


def test_deploy_checks_the_tested_artefact_and_the_stages_template_before_deploying() -> None:
    # WHEN make deploy is dry-run for a stage with params
    lines = _dry_run("deploy", f"STAGE={STAGE}", f"PARAMS={PARAMS}")
    package = ".drugsync/deploy-package"
    template = f"{package}/cloudformation-template-update-stack.json"

    # THEN the artefact is checked as tested, the stage's template compiled offline, linted and checked
    # against the artefact, and only then deployed, from that compiled package
    order = [
        _position(lines, "infra.package --check --require-tested"),
        _position(lines, f"node_modules/.bin/osls package --stage {STAGE} {PARAMS} --package {package}"),
        _position(lines, "cfn-lint", template),
        _position(lines, "infra.check_template", template, "dist/drugsync-lambda.zip"),
        _position(lines, f"node_modules/.bin/osls deploy --stage {STAGE} {PARAMS} --package {package}"),
    ]
    assert order == sorted(order)


def test_make_test_records_what_it_tested_only_from_a_whole_passing_run() -> None:
    lines = _dry_run("test")
    order = [
        _position(lines, "infra.package --record-tested begin"),
        # the session's end records it (tests/conftest.py), with no PYTEST_ADDOPTS to narrow the run
        _position(lines, "DRUGSYNC_RECORD_TESTED=1 PYTEST_ADDOPTS= ", "pytest tests"),
    ]
    assert order == sorted(order)
    assert not any("--record-tested end" in line for line in lines)  # never after a failed run (make -i)


@pytest.mark.parametrize(
    ("status", "paths", "deselected", "skipped", "reason"),
    [
        (1, ["tests"], 0, 0, "pytest exited 1"),
        (0, ["tests/unit"], 0, 0, "not tests/"),
        (0, ["tests", "tests"], 0, 0, "not tests/"),
        (0, ["tests"], 3, 0, "3 test(s) deselected"),
        (0, ["tests"], 0, 2, "2 test(s) skipped"),
    ],
)
def test_only_every_test_passing_counts_as_tested(
    status: int, paths: list[str], deselected: int, skipped: int, reason: str
) -> None:
    reasons = incomplete_run(status, [ROOT / path for path in paths], deselected, skipped)
    assert any(reason in text for text in reasons), reasons
    assert incomplete_run(0, [ROOT / "tests"], 0, 0) == []


def test_a_narrowed_session_under_make_test_fails_and_records_nothing(tmp_path: Path) -> None:
    # GIVEN `make test`'s session flag, and a run of one test instead of tests/
    record = ROOT / ".drugsync" / "tested.json"
    before = record.read_bytes() if record.exists() else None
    one_test = "tests/unit/test_make_deploy.py::test_deploy_checks_the_tested_artefact_and_the_stages_template_before_deploying"

    session = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path}", one_test],
        cwd=ROOT, env={**os.environ, "DRUGSYNC_RECORD_TESTED": "1"}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip

    # THEN its passing test does not make it a tested run: it fails and leaves the record as it was
    assert session.returncode == 1, session.stdout
    assert "not recorded as tested: it ran tests/unit/test_make_deploy.py, not tests/" in session.stdout
    assert (record.read_bytes() if record.exists() else None) == before
