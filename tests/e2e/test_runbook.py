"""The README's runbook, as written: each `drugsync` line runs against the local stack in its guise
as a deployed stack (`drugsync-local`); the `make deploy` and `make remove` lines, which need AWS,
are checked offline (`make -n`, and the deploy's params compiled and checked like infra-check)."""

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from console.local_deploy import LOCAL_STACK_NAME
from infra.check_template import check_template

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ARTEFACT = ROOT / "dist" / "drugsync-lambda.zip"
# `drugsync` is this checkout's console, whatever the PATH holds.
PRELUDE = f'drugsync() {{ {shlex.quote(sys.executable)} -m console.cli "$@"; }}\n'
CATALOG_DRUGS = 3000


def runbook_lines() -> list[str]:
    """The command lines of the runbook's ```sh blocks, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Runbook: production on AWS\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def shell(line: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", PRELUDE + line], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def operator_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An operator's shell after `eval "$(drugsync local up)"`, with the catalog seeded."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DRUGSYNC_", "AWS_"))
        and key not in ("DATABASE_URL", "REDIS_URL", "QUEUE_URL", "DLQ_URL")
    }
    env["DRUGSYNC_STATE_DIR"] = str(tmp_path_factory.mktemp("runbook-state"))
    env["PYTHONPATH"] = str(ROOT)
    up = shell("drugsync local up", env)
    assert up.returncode == 0, up.stderr
    for line in up.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = os.path.expandvars(shlex.split(value)[0]) if name != "PATH" else env.get("PATH", "")
    seeded = shell(f"drugsync seed --drugs {CATALOG_DRUGS}", env)
    assert seeded.returncode == 0, seeded.stderr
    try:
        yield env
    finally:
        shell("drugsync local down", env)


@pytest.fixture
def event_source(operator_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """What AWS runs for the deployed consumer: its event source mapping, here `drugsync work`."""
    log = tmp_path / "consumers.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "work", "--max-concurrency", "2", "--log-file", str(log)],
        env=operator_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        worker.terminate()
        worker.wait(60)


def check_make_line(line: str) -> None:
    """A make line that needs AWS: what it would run (make -n), and for deploy, the template it makes."""
    dry = subprocess.run(
        ["bash", "-c", line.replace("make ", "make -n ", 1)], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    words = shlex.split(line)
    target = words[1]
    options = dict(word.split("=", 1) for word in words[2:])
    command = f"node_modules/.bin/osls {target} --stage {options['STAGE']} {options['PARAMS']}"
    assert command in dry.stdout, dry.stdout
    if target == "deploy":
        assert "infra.package --check" in dry.stdout  # a stale artefact is refused before deploying
        check_deploy_params(options["STAGE"], options["PARAMS"])


def check_deploy_params(stage: str, params: str) -> None:
    """The deploy line's params compile offline to a template cfn-lint and infra-check accept."""
    assert ARTEFACT.is_file(), f"{ARTEFACT} is missing: `make test` builds it first (make package)"
    out = ROOT / ".drugsync" / "runbook-package"
    compiled = subprocess.run(
        ["node_modules/.bin/osls", "package", "--stage", stage, *shlex.split(params), "--package", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    template_path = out / "cloudformation-template-update-stack.json"
    template = json.loads(template_path.read_text())
    assert check_template(template) == []
    linted = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), "--ignore-checks", "W3005", "--", str(template_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert linted.returncode == 0, linted.stdout
    consumer = template["Resources"]["ConsumerLambdaFunction"]["Properties"]
    assert consumer["VpcConfig"]["SubnetIds"] == {
        "Fn::Split": [",", re.search(r"subnetIds=(\S+)", params).group(1)]  # type: ignore[union-attr]
    }


@pytest.mark.usefixtures("event_source")
def test_every_runbook_line_runs_against_the_local_stack_or_is_checked(operator_env: dict[str, str]) -> None:
    lines = runbook_lines()
    assert any(line.startswith("make deploy") for line in lines)
    assert any(line.startswith("drugsync sync") for line in lines)
    env = dict(operator_env)
    outputs: list[tuple[str, str]] = []
    for line in lines:
        if line.startswith("export "):
            # The production stack and region; here the local stack's, which the shell already has.
            exported = dict(word.split("=", 1) for word in shlex.split(line)[1:])
            assert set(exported) == {"DRUGSYNC_STACK", "AWS_DEFAULT_REGION"}, line
            env["DRUGSYNC_STACK"] = LOCAL_STACK_NAME
        elif line.startswith("make "):
            check_make_line(line)
        elif line.startswith("drugsync "):
            assert "DRUGSYNC_STACK" in env, f"{line!r} runs before the runbook names its stack"
            result = shell(line, env)
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            outputs.append((line, result.stdout))
            print(f"$ {line}\n{result.stdout}{result.stderr}")
        else:
            pytest.fail(f"runbook line neither runs here nor is checked: {line!r}")

    printed = dict(outputs)  # a line run twice (status --watch) keeps its last output
    assert [line for line, _ in outputs].count("drugsync status --watch") == 2
    assert "Amoxicillin 500 mg capsule" in printed['drugsync search "amoxicillin 500 mg capsule"']
    assert re.search(
        r"missing 0  extra 0  stale 0  \(postgres eligible [\d,]+, redis documents",
        printed["drugsync verify"],
    )
    assert printed["drugsync verify"].rstrip().endswith("no drift")
