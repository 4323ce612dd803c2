"""`make package`: the Lambda zip, with Linux wheels for the configured runtime and architecture.

    python -m infra.package [--python-version 3.12] [--arch arm64|x86_64] [--out dist/drugsync-lambda.zip]
    python -m infra.package --check            # is dist's zip current and intact? (exit 1 when not)
    python -m infra.package --check --require-tested   # ... and what `make test` last passed on
    python -m infra.package --record-tested begin|end  # `make test`: what it is about to test, then tested
    python -m infra.package --import-times ZIP # cold import of each handler from a zip built for here

Defaults come from serverless.yml (provider.runtime, provider.architecture), never from the
machine building it: pip is told the target platform and takes binary wheels only. The versions
are those installed in this venv (the one the tests ran with), pinned exactly, so what is deployed
is what was tested; drugsync_artefact.json inside the zip records them, the sha256 of every file
in the zip, and whether it ships bytecode. The sources are the files git tracks under producer/,
consumer/ and shared/ (all files there outside a git checkout), but the local model's data (LOCAL_ONLY).
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from infra.bytecode import compile_tree, find_interpreter, import_times
from infra.ca_bundle import BUNDLE_IN_ARTEFACT, rds_ca_bundle
from infra.integrity import MANIFEST, content_problems, entry_digests, sha256

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("producer", "consumer", "shared")
# Data of the optional local model (`.[local-model]`, never deployed): its tokenizer stays out of the zip.
LOCAL_ONLY = ("shared/embedders/all-minilm-l6-v2/",)
DEFAULT_OUT = ROOT / "dist" / "drugsync-lambda.zip"
TESTED = ROOT / ".drugsync" / "tested.json"
# https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
UNZIPPED_LIMIT = 250 * 2**20
# Amazon Linux 2023 (python3.12 runtime) has glibc 2.34; every manylinux tag up to it works.
MANYLINUX_TAGS = ("manylinux2014", "manylinux_2_28", "manylinux_2_34")
ARCHES = {"arm64": "aarch64", "x86_64": "x86_64"}


@dataclass(frozen=True)
class Artefact:
    path: Path
    zipped_bytes: int
    unzipped_bytes: int

    @classmethod
    def measure(cls, path: Path) -> "Artefact":
        with zipfile.ZipFile(path) as archive:
            unzipped = sum(info.file_size for info in archive.infolist())
        return cls(path, path.stat().st_size, unzipped)

    def problems(self) -> list[str]:
        problems = []
        if self.unzipped_bytes > UNZIPPED_LIMIT:
            problems.append(f"unzipped {self.unzipped_bytes / 2**20:.0f} MiB exceeds Lambda's 250 MiB")
        return problems

    def sizes(self) -> str:
        return (
            f"{self.zipped_bytes / 2**20:.1f} MiB zipped (50 MiB limits only a direct upload; osls uploads"
            " through S3),"
            f" {self.unzipped_bytes / 2**20:.1f} MiB unzipped (limit 250 MiB)"
        )


def configured_target(serverless_yml: Path = ROOT / "serverless.yml") -> tuple[str, str]:
    """(python version, architecture) from serverless.yml's provider section."""
    text = serverless_yml.read_text()
    runtime = re.search(r"^\s+runtime:\s*python(\d\.\d+)", text, re.MULTILINE)
    arch = re.search(r"^\s+architecture:\s*(\S+)", text, re.MULTILINE)
    if runtime is None:
        raise SystemExit("serverless.yml: provider.runtime pythonX.Y not found")
    return runtime.group(1), arch.group(1) if arch else "x86_64"


def runtime_requirements() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def target_environment(python_version: str, arch: str) -> dict[str, str]:
    """Marker variables of the Lambda runtime (Linux, CPython), not of the building machine."""
    environment = {name: str(value) for name, value in default_environment().items()}
    if environment["python_version"] != python_version:
        environment["python_full_version"] = f"{python_version}.0"
    environment.update(
        python_version=python_version, platform_machine=ARCHES[arch], sys_platform="linux",
        platform_system="Linux", os_name="posix", implementation_name="cpython",
        platform_python_implementation="CPython",
    )  # fmt: skip
    return environment


def _applies(requirement: Requirement, environment: dict[str, str], extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras | {""})


def runtime_closure(python_version: str, arch: str) -> dict[str, str]:
    """{distribution: version} installed in this venv for pyproject's dependencies, recursively."""
    environment = target_environment(python_version, arch)
    pins: dict[str, str] = {}
    pending = [(Requirement(text), set[str]()) for text in runtime_requirements()]
    seen_extras: dict[str, set[str]] = {}
    while pending:
        requirement, _ = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen_extras and requirement.extras <= seen_extras[name]:
            continue
        seen_extras[name] = seen_extras.get(name, set()) | requirement.extras
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"{name} is needed on python{python_version} {arch} but not installed in this venv:"
                " the artefact would hold a version nobody tested"
            ) from None
        pins[name] = distribution.version
        for text in distribution.requires or []:
            dependency = Requirement(text)
            if _applies(dependency, environment, seen_extras[name]):
                pending.append((dependency, set()))
    return dict(sorted(pins.items()))


def data_files() -> dict[str, bytes]:
    """Files the zip carries beside the code, by their path in it: the RDS CA bundle."""
    return {BUNDLE_IN_ARTEFACT: rds_ca_bundle().encode()}


def source_files(root: Path = ROOT) -> list[str]:
    """The project files the zip ships, relative to root: those git tracks, when root is a checkout
    (an untracked settings_local.py or *.orig stays out); every file otherwise; never LOCAL_ONLY's."""
    tracked = _git_tracked(root)
    if tracked is None:
        tracked = [
            file.relative_to(root).as_posix()
            for package in PACKAGES
            for file in (root / package).rglob("*")
            if file.is_file() and "__pycache__" not in file.parts
        ]
    return sorted(name for name in tracked if (root / name).is_file() and not name.startswith(LOCAL_ONLY))


def _git_tracked(root: Path) -> list[str] | None:
    """Files git tracks under PACKAGES, or None when root is not the top of a git checkout."""
    try:
        top = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
        return None
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--", *PACKAGES], capture_output=True, check=True
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def source_digests(root: Path = ROOT) -> dict[str, str]:
    """sha256 of every project file that goes into the zip, by its path in the zip."""
    code = {name: sha256((root / name).read_bytes()) for name in source_files(root)}
    return code | {name: sha256(data) for name, data in data_files().items()}


def copy_sources(staging: Path, root: Path = ROOT) -> None:
    for name in source_files(root):
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, staging / name)
    for name, data in data_files().items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)


def install_wheels(target: Path, python_version: str, arch: str, pins: dict[str, str]) -> None:
    machine = ARCHES[arch]
    platforms = [arg for tag in MANYLINUX_TAGS for arg in ("--platform", f"{tag}_{machine}")]
    # --no-deps: the closure is already complete and pinned; pip must not pick other versions.
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--no-compile", "--target", str(target), "--implementation", "cp", "--python-version", python_version,
        "--only-binary=:all:", *platforms, *(f"{name}=={version}" for name, version in pins.items()),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def build(out: Path, python_version: str, arch: str, target_python: Path | None = None) -> Artefact:
    """The zip; with bytecode when an interpreter of the target's X.Y is given or found."""
    pins = runtime_closure(python_version, arch)
    interpreter = find_interpreter(python_version, target_python)
    manifest: dict[str, Any] = {
        "python": python_version, "arch": arch, "dependencies": pins, "sources": source_digests(),
        "bytecode": {"included": interpreter is not None, "python": interpreter[1] if interpreter else None},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="drugsync-package-") as folder:
        staging = Path(folder)
        install_wheels(staging, python_version, arch, pins)
        copy_sources(staging)
        if interpreter is not None:
            compile_tree(interpreter[0], staging)
        write_zip(out, staging, manifest)
    return Artefact.measure(out)


def write_zip(out: Path, staging: Path, manifest: dict[str, Any]) -> None:
    """Every file under staging, and the manifest with the sha256 of each, read back from the zip."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(staging.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(staging))
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED) as archive:
        files = entry_digests(archive)
        archive.writestr(MANIFEST, json.dumps({**manifest, "files": files}, indent=1, sort_keys=True) + "\n")


def read_manifest(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        return dict(json.loads(archive.read(MANIFEST)))


def staleness(path: Path, python_version: str, arch: str) -> list[str]:
    """What differs between the zip and what `make package` would build now, and what in the zip is
    not what its manifest recorded (empty: current and intact)."""
    if not path.is_file():
        return [f"{path} does not exist"]
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = dict(json.loads(archive.read(MANIFEST)))
            damaged = content_problems(archive, manifest)
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return [f"{path} has no readable {MANIFEST}"]
    built_for = (manifest.get("python"), manifest.get("arch"))
    if built_for != (python_version, arch):
        wanted = f"python{python_version} {arch}"
        return [f"built for python{built_for[0]} {built_for[1]}, the target is {wanted}"]
    return (
        damaged
        + _differences("source", manifest.get("sources", {}), source_digests())
        + _differences("dependency", manifest.get("dependencies", {}), runtime_closure(python_version, arch))
    )


def tested_record(python_version: str, arch: str) -> dict[str, Any]:
    """The target-independent part of a manifest: what `make test` ran (sources, dependency versions)."""
    return {"sources": source_digests(), "dependencies": runtime_closure(python_version, arch)}


def record_tested(step: str, python_version: str, arch: str, path: Path | None = None) -> list[str]:
    """`begin`: note what is about to be tested; `end` (after the tests passed): keep it as tested,
    unless the sources or the venv changed while the tests ran."""
    path = path or TESTED  # read when called: tests point TESTED elsewhere
    pending = path.with_suffix(".pending.json")
    now = tested_record(python_version, arch)
    if step == "begin":
        pending.parent.mkdir(parents=True, exist_ok=True)
        pending.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        return []
    if not pending.is_file():
        return [f"no {pending}: `make test` records it before the tests run"]
    changed = _compare_tested(json.loads(pending.read_text()), now)
    if changed:
        return [f"changed while the tests ran: {'; '.join(changed[:3])}: run `make test` again"]
    pending.replace(path)
    return []


def incomplete_run(exit_status: int, paths: list[Path], deselected: int, skipped: int) -> list[str]:
    """Why a pytest session is not one `make test` may record as tested (empty: it may).

    Only every test of tests/ passing counts: a run with failures, a selection (-k, --lf,
    --deselect, a path inside tests/) or skipped tests says nothing about the rest.
    """
    reasons = [f"pytest exited {exit_status}"] if exit_status != 0 else []
    if [path.resolve() for path in paths] != [ROOT / "tests"]:
        reasons.append(f"it ran {', '.join(map(str, paths)) or 'nothing'}, not tests/")
    if deselected:
        reasons.append(f"{deselected} test(s) deselected")
    if skipped:
        reasons.append(f"{skipped} test(s) skipped")
    return reasons


def untested(path: Path, record: Path | None = None) -> list[str]:
    """How the zip's sources and versions differ from what `make test` last passed on."""
    record = record or TESTED
    if not record.is_file():
        return [f"no record of a passing test run ({record})"]
    return _compare_tested(json.loads(record.read_text()), read_manifest(path))


def _compare_tested(tested: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """Names each source and dependency that is not exactly as tested."""
    problems = []
    for kind in ("sources", "dependencies"):
        was, now = tested.get(kind, {}), other.get(kind, {})
        problems += [
            f"{name} {now.get(name, 'absent')}, tested {was.get(name, 'absent')}"
            if kind == "dependencies"
            else f"source {name} is not the tested one"
            for name in sorted(was.keys() | now.keys())
            if was.get(name) != now.get(name)
        ]
    return problems


def _differences(kind: str, built: dict[str, str], now: dict[str, str]) -> list[str]:
    """Sources differ by digest, dependencies by version; both by what was added or removed."""
    changed = [
        f"{kind} {name} changed"
        if kind == "source"
        else f"{name} {built[name]} in the zip, {now[name]} in the venv"
        for name in sorted(built.keys() & now.keys())
        if built[name] != now[name]
    ]
    added = [f"{kind} {name} not in the zip" for name in sorted(now.keys() - built.keys())]
    removed = [f"{kind} {name} no longer in the project" for name in sorted(built.keys() - now.keys())]
    return changed + added + removed


def main(argv: list[str] | None = None) -> int:
    python_version, arch = configured_target()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python-version", default=python_version)
    parser.add_argument("--arch", default=arch, choices=sorted(ARCHES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--target-python", type=Path, help="interpreter of the target's X.Y for bytecode")
    parser.add_argument("--check", action="store_true", help="exit 1 unless --out is current and intact")
    parser.add_argument("--require-tested", action="store_true", help="with --check: and what was tested")
    parser.add_argument("--record-tested", choices=("begin", "end"), help="for `make test`")
    parser.add_argument("--import-times", type=Path, metavar="ZIP", help="a zip built for this machine")
    args = parser.parse_args(argv)
    if args.import_times:
        for handler, seconds in import_times(args.import_times).items():
            print(f"{handler}: cold import {seconds * 1000:.0f} ms (median of 5, no bytecode written)")
        return 0
    if args.record_tested:
        return _fail(record_tested(args.record_tested, args.python_version, args.arch))
    if args.check:
        return _report_check(args.out, args.python_version, args.arch, args.require_tested)
    artefact = build(args.out, args.python_version, args.arch, args.target_python)
    bytecode = read_manifest(artefact.path)["bytecode"]
    print(f"{artefact.path}: python{args.python_version} {args.arch}, {artefact.sizes()}")
    print(bytecode_note(bytecode, args.python_version))
    return _fail([f"FAIL {problem}" for problem in artefact.problems()], stream=sys.stdout)


def bytecode_note(bytecode: dict[str, Any], python_version: str) -> str:
    if bytecode["included"]:
        return f"bytecode compiled by python{bytecode['python']}"
    return (
        f"no bytecode: no python{python_version} found (on PATH, in ~/.pyenv or --target-python);"
        " every cold start will compile what it imports"
    )


def _fail(problems: list[str], stream: Any = sys.stderr) -> int:
    for problem in problems:
        print(problem, file=stream)
    return 1 if problems else 0


def _report_check(path: Path, python_version: str, arch: str, require_tested: bool) -> int:
    differences = staleness(path, python_version, arch)
    if differences:
        print(f"{path} is not current: {_shown(differences)}: run `make package`", file=sys.stderr)
        return 1
    if require_tested and (differences := untested(path)):
        print(
            f"{path} is not what the tests passed on: {_shown(differences)}: run `make test`", file=sys.stderr
        )
        return 1
    print(f"{path} is current: python{python_version} {arch}, {Artefact.measure(path).sizes()}")
    return 0


def _shown(differences: list[str]) -> str:
    return "; ".join(differences[:3]) + (f"; and {len(differences) - 3} more" if len(differences) > 3 else "")


if __name__ == "__main__":
    sys.exit(main())
