"""`python -m infra.package --check`: a zip whose manifest differs from the sources or the venv is stale."""

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from infra.package import MANIFEST, main, runtime_closure, source_digests, staleness

TARGET = ("3.12", "arm64")


def _zip_with(tmp_path: Path, **changes: Any) -> Path:
    """A zip whose manifest describes the current tree and venv, but for `changes`."""
    manifest = {"python": TARGET[0], "arch": TARGET[1], "dependencies": runtime_closure(*TARGET),
                "sources": source_digests(), **changes}  # fmt: skip
    path = tmp_path / "drugsync-lambda.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MANIFEST, json.dumps(manifest))
    return path


def test_a_zip_built_from_the_current_tree_and_venv_is_current(tmp_path: Path) -> None:
    assert staleness(_zip_with(tmp_path), *TARGET) == []


def test_a_changed_source_is_named(tmp_path: Path) -> None:
    sources = {**source_digests(), "consumer/handler.py": "0" * 64}
    assert staleness(_zip_with(tmp_path, sources=sources), *TARGET) == ["source consumer/handler.py changed"]


def test_a_new_source_is_named(tmp_path: Path) -> None:
    sources = {name: digest for name, digest in source_digests().items() if name != "shared/drift.py"}
    assert staleness(_zip_with(tmp_path, sources=sources), *TARGET) == [
        "source shared/drift.py not in the zip"
    ]


def test_a_dependency_version_other_than_the_venvs_is_named(tmp_path: Path) -> None:
    installed = runtime_closure(*TARGET)["redis"]
    dependencies = {**runtime_closure(*TARGET), "redis": "0.0.1"}
    assert staleness(_zip_with(tmp_path, dependencies=dependencies), *TARGET) == [
        f"redis 0.0.1 in the zip, {installed} in the venv"
    ]


def test_another_target_is_named(tmp_path: Path) -> None:
    assert staleness(_zip_with(tmp_path, arch="x86_64"), *TARGET) == [
        "built for python3.12 x86_64, the target is python3.12 arm64"
    ]


def test_the_check_prints_one_line_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--out", str(tmp_path / "missing.zip")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "does not exist" in error
    assert error.rstrip().endswith("run `make package`")
