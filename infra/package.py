"""`make package`: the Lambda zip, with Linux wheels for the configured runtime and architecture.

    python -m infra.package [--python-version 3.12] [--arch arm64|x86_64] [--out dist/drugsync-lambda.zip]
    python -m infra.package --check            # is dist's zip current? (exit 1 when not)
    python -m infra.package --import-times ZIP # cold import of each handler from a zip built for here

Defaults come from serverless.yml (provider.runtime, provider.architecture), never from the
machine building it: pip is told the target platform and takes binary wheels only. The versions
are those installed in this venv (the one the tests ran with), pinned exactly, so what is deployed
is what was tested; drugsync_artefact.json inside the zip records them and each source's sha256.
"""

import argparse
import hashlib
import json
import re
import shutil
import statistics
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

from infra.ca_bundle import BUNDLE_IN_ARTEFACT, rds_ca_bundle

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("producer", "consumer", "shared")
DEFAULT_OUT = ROOT / "dist" / "drugsync-lambda.zip"
MANIFEST = "drugsync_artefact.json"
HANDLERS = ("producer.handler", "consumer.handler")
# https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
UNZIPPED_LIMIT = 250 * 2**20
ZIPPED_DIRECT_UPLOAD_LIMIT = 50 * 2**20
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
        if self.zipped_bytes > ZIPPED_DIRECT_UPLOAD_LIMIT:
            problems.append(f"zipped {self.zipped_bytes / 2**20:.0f} MiB exceeds 50 MiB: upload through S3")
        return problems

    def sizes(self) -> str:
        return (
            f"{self.zipped_bytes / 2**20:.1f} MiB zipped (limit 50 MiB direct upload),"
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


def source_digests(root: Path = ROOT) -> dict[str, str]:
    """sha256 of every project file that goes into the zip, by its path in the zip."""
    code = {
        file.relative_to(root).as_posix(): hashlib.sha256(file.read_bytes()).hexdigest()
        for package in PACKAGES
        for file in sorted((root / package).rglob("*"))
        if file.is_file() and "__pycache__" not in file.parts
    }
    return code | {name: hashlib.sha256(data).hexdigest() for name, data in data_files().items()}


def install_wheels(target: Path, python_version: str, arch: str, pins: dict[str, str]) -> None:
    machine = ARCHES[arch]
    platforms = [arg for tag in MANYLINUX_TAGS for arg in ("--platform", f"{tag}_{machine}")]
    # --no-deps: the closure is already complete and pinned; pip must not pick other versions.
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
        "--target", str(target), "--implementation", "cp", "--python-version", python_version,
        "--only-binary=:all:", *platforms, *(f"{name}=={version}" for name, version in pins.items()),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def build(out: Path, python_version: str, arch: str) -> Artefact:
    pins = runtime_closure(python_version, arch)
    manifest = {"python": python_version, "arch": arch, "dependencies": pins, "sources": source_digests()}
    with tempfile.TemporaryDirectory(prefix="drugsync-package-") as folder:
        staging = Path(folder)
        install_wheels(staging, python_version, arch, pins)
        for package in PACKAGES:
            shutil.copytree(ROOT / package, staging / package, ignore=shutil.ignore_patterns("__pycache__"))
        for name, data in data_files().items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(staging.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    archive.write(file, file.relative_to(staging))
    return Artefact.measure(out)


def read_manifest(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        return dict(json.loads(archive.read(MANIFEST)))


def staleness(path: Path, python_version: str, arch: str) -> list[str]:
    """What differs between the zip and what `make package` would build now (empty: current)."""
    if not path.is_file():
        return [f"{path} does not exist"]
    try:
        manifest = read_manifest(path)
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return [f"{path} has no readable {MANIFEST}"]
    built_for = (manifest.get("python"), manifest.get("arch"))
    if built_for != (python_version, arch):
        wanted = f"python{python_version} {arch}"
        return [f"built for python{built_for[0]} {built_for[1]}, the target is {wanted}"]
    return _differences("source", manifest.get("sources", {}), source_digests()) + _differences(
        "dependency", manifest.get("dependencies", {}), runtime_closure(python_version, arch)
    )


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


def import_times(path: Path, runs: int = 3) -> dict[str, float]:
    """Median seconds to import each handler from the unpacked zip, in a fresh `python -S` each time."""
    with tempfile.TemporaryDirectory(prefix="drugsync-import-") as folder:
        zipfile.ZipFile(path).extractall(folder)
        return {handler: statistics.median(_import_once(Path(folder), handler) for _ in range(runs))
                for handler in HANDLERS}  # fmt: skip


def _import_once(code: Path, module: str) -> float:
    script = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = {"PYTHONPATH": str(code), "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run(
        [sys.executable, "-S", "-P", "-c", script], env=env,
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return float(done.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    python_version, arch = configured_target()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python-version", default=python_version)
    parser.add_argument("--arch", default=arch, choices=sorted(ARCHES))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 unless --out is current")
    parser.add_argument("--import-times", type=Path, metavar="ZIP", help="a zip built for this machine")
    args = parser.parse_args(argv)
    if args.import_times:
        for handler, seconds in import_times(args.import_times).items():
            print(f"{handler}: cold import {seconds * 1000:.0f} ms (median of 3)")
        return 0
    if args.check:
        return _report_check(args.out, args.python_version, args.arch)
    artefact = build(args.out, args.python_version, args.arch)
    print(f"{artefact.path}: python{args.python_version} {args.arch}, {artefact.sizes()}")
    for problem in artefact.problems():
        print(f"FAIL {problem}")
    return 1 if artefact.problems() else 0


def _report_check(path: Path, python_version: str, arch: str) -> int:
    differences = staleness(path, python_version, arch)
    if differences:
        shown = "; ".join(differences[:3]) + (
            f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
        )
        print(f"{path} is not current: {shown}: run `make package`", file=sys.stderr)
        return 1
    print(f"{path} is current: python{python_version} {arch}, {Artefact.measure(path).sizes()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
