"""The Lambda artefact: Linux wheels for the target, within Lambda's limits, importable as deployed."""

import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from infra.package import ARCHES, build, configured_target

pytestmark = pytest.mark.integration
THIS_ARCH = {machine: arch for arch, machine in ARCHES.items()}[platform.machine()]
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def test_the_configured_target_is_read_from_serverless_yml() -> None:
    assert configured_target() == ("3.12", "arm64")


def test_both_handlers_import_from_the_unpacked_artefact(tmp_path: Path) -> None:
    # Built for this machine's Python and architecture, so that it can be imported here.
    artefact = build(tmp_path / "lambda.zip", THIS_PYTHON, THIS_ARCH)
    assert artefact.problems() == []
    unpacked = tmp_path / "task"
    zipfile.ZipFile(artefact.path).extractall(unpacked)

    # -S: no site-packages, so only what the zip holds can be imported, as in /var/task.
    imported = subprocess.run(
        [sys.executable, "-S", "-c", "import producer.handler, consumer.handler; print('ok')"],
        env={"PYTHONPATH": str(unpacked), "AWS_DEFAULT_REGION": "us-east-1"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "ok"
    names = zipfile.ZipFile(artefact.path).namelist()
    assert any(
        name.startswith("pydantic_core/") and THIS_ARCH.replace("arm64", "aarch64") in name for name in names
    )
    assert not any(name.startswith(("console/", "tests/", "infra/")) for name in names)
