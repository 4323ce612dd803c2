"""The Lambda artefact: Linux wheels for the target, within Lambda's limits, importable as deployed."""

import json
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from infra.bytecode import import_times
from infra.integrity import MANIFEST
from infra.package import Artefact, configured_target, source_digests, staleness
from tests.conftest import BuiltArtefact

pytestmark = pytest.mark.integration


def test_the_configured_target_is_read_from_serverless_yml() -> None:
    assert configured_target() == ("3.12", "arm64")


def test_both_handlers_import_from_the_unpacked_artefact(this_machine_artefact: BuiltArtefact) -> None:
    # -S: no site-packages, so only what the zip holds can be imported, as in /var/task.
    imported = subprocess.run(
        [sys.executable, "-S", "-P", "-c", "import producer.handler, consumer.handler; print('ok')"],
        env={"PYTHONPATH": str(this_machine_artefact.folder), "AWS_DEFAULT_REGION": "us-east-1"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "ok"
    assert Artefact.measure(this_machine_artefact.zip_path).problems() == []
    names = zipfile.ZipFile(this_machine_artefact.zip_path).namelist()
    machine = this_machine_artefact.arch.replace("arm64", "aarch64")
    assert any(name.startswith("pydantic_core/") and machine in name for name in names)
    assert not any(name.startswith(("console/", "tests/", "infra/")) for name in names)


def test_the_manifest_pins_the_tested_versions_and_each_source(this_machine_artefact: BuiltArtefact) -> None:
    manifest = json.loads(zipfile.ZipFile(this_machine_artefact.zip_path).read(MANIFEST))
    assert (manifest["python"], manifest["arch"]) == (
        this_machine_artefact.python_version,
        this_machine_artefact.arch,
    )
    # The venv's versions, exactly, including dependencies of dependencies and extras.
    for name in ("redis", "pydantic-core", "botocore", "psycopg-binary", "aws-lambda-powertools"):
        assert manifest["dependencies"][name] == metadata.version(name)
    assert "aws-xray-sdk" not in manifest["dependencies"]  # installed in the venv, but no extra asks for it
    assert manifest["sources"] == source_digests()
    assert _installed(this_machine_artefact.zip_path) == manifest["dependencies"]


def test_the_artefact_ships_bytecode_its_python_uses_without_checking_timestamps(
    this_machine_artefact: BuiltArtefact,
) -> None:
    archive = zipfile.ZipFile(this_machine_artefact.zip_path)
    manifest = json.loads(archive.read(MANIFEST))
    assert manifest["bytecode"]["included"] is True
    assert manifest["bytecode"]["python"].startswith(f"{this_machine_artefact.python_version}.")
    tag = f"cpython-{this_machine_artefact.python_version.replace('.', '')}"
    pyc = archive.read(f"consumer/__pycache__/handler.{tag}.pyc")
    # PEP 552: flags word 0b01 = hash-based and unchecked, so /var/task's timestamps do not matter
    assert int.from_bytes(pyc[4:8], "little") == 0b01
    assert f"redis/__pycache__/client.{tag}.pyc" in archive.namelist()


def test_a_copy_without_redis_and_pydantic_core_or_with_another_handler_is_refused(
    this_machine_artefact: BuiltArtefact, tmp_path: Path
) -> None:
    # GIVEN copies of the built zip, its manifest untouched: one without redis/ and pydantic_core/,
    # one whose consumer handler was replaced
    target = (this_machine_artefact.python_version, this_machine_artefact.arch)
    built = zipfile.ZipFile(this_machine_artefact.zip_path)
    assert staleness(this_machine_artefact.zip_path, *target) == []
    for which, drop, replace in (
        ("without", ("redis/", "pydantic_core/"), {}),
        ("replaced", (), {"consumer/handler.py": b"def lambda_handler(e, c):\n    pass\n"}),
    ):
        copy = tmp_path / which / "drugsync-lambda.zip"
        copy.parent.mkdir()
        with zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as archive:
            for info in built.infolist():
                if not info.filename.startswith(drop):
                    archive.writestr(info.filename, replace.get(info.filename, built.read(info)))

        # WHEN each is checked THEN what is missing or changed is named
        problems = staleness(copy, *target)
        if which == "without":
            assert "redis/client.py is in the manifest but not in the zip" in problems
            assert "pydantic_core/__init__.py is in the manifest but not in the zip" in problems
            assert any(
                p.startswith("redis-") and "RECORD lists redis/client.py, missing" in p for p in problems
            )
        else:
            assert problems == ["consumer/handler.py in the zip differs from its digest in the manifest"]


def _installed(zip_path: Path) -> dict[str, str]:
    """{name: version} from the METADATA of each .dist-info folder in the zip."""
    archive = zipfile.ZipFile(zip_path)
    found: dict[str, str] = {}
    for name in archive.namelist():
        if name.count("/") == 1 and name.endswith(".dist-info/METADATA"):
            headers = Parser().parsestr(archive.read(name).decode(), headersonly=True)
            found[canonicalize_name(headers["Name"])] = str(headers["Version"])
    return found


def test_cold_import_times_from_the_artefact(
    this_machine_artefact: BuiltArtefact, capsys: pytest.CaptureFixture[str]
) -> None:
    # Reported, not asserted: a shared machine's timings are noise for a pass/fail line.
    times = import_times(this_machine_artefact.zip_path)
    assert set(times) == {"producer.handler", "consumer.handler"}
    with capsys.disabled():
        print("\n" + ", ".join(f"{handler} {seconds * 1000:.0f} ms" for handler, seconds in times.items()))


def _osls_package(artefact: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """`osls package` as an operator would run it by hand, with package.artifact resolved to `artefact`."""
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [str(root / "node_modules" / ".bin" / "osls"), "package", "--package", str(out)],
        cwd=root, capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "DRUGSYNC_ARTEFACT": str(artefact), "DRUGSYNC_PYTHON": sys.executable},
    )  # fmt: skip


@pytest.mark.parametrize("which", ["missing", "stale"])
def test_packaging_refuses_a_missing_or_stale_artefact_and_says_what_to_run(
    which: str, this_machine_artefact: BuiltArtefact, tmp_path: Path
) -> None:
    # This machine's build targets another Python and architecture than serverless.yml: stale there.
    artefact = this_machine_artefact.zip_path if which == "stale" else tmp_path / "drugsync-lambda.zip"
    packaged = _osls_package(artefact, tmp_path / "out")
    assert packaged.returncode != 0
    said = packaged.stdout + packaged.stderr
    assert "the Lambda artefact cannot be deployed" in said
    assert "run `make package`" in said
    expected = "does not exist" if which == "missing" else "the target is python3.12 arm64"
    assert expected in said, said
    assert not (tmp_path / "out" / "cloudformation-template-update-stack.json").exists()
