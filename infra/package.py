"""`make package`: the Lambda zip, with Linux wheels for the configured runtime and architecture.

    python -m infra.package [--python-version 3.12] [--arch arm64|x86_64] [--out dist/drugsync-lambda.zip]

Defaults come from serverless.yml (provider.runtime, provider.architecture), never from the
machine building it: pip is told the target platform and takes binary wheels only.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("producer", "consumer", "shared")
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

    def problems(self) -> list[str]:
        problems = []
        if self.unzipped_bytes > UNZIPPED_LIMIT:
            problems.append(f"unzipped {self.unzipped_bytes / 2**20:.0f} MiB exceeds Lambda's 250 MiB")
        if self.zipped_bytes > ZIPPED_DIRECT_UPLOAD_LIMIT:
            problems.append(f"zipped {self.zipped_bytes / 2**20:.0f} MiB exceeds 50 MiB: upload through S3")
        return problems


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


def install_wheels(target: Path, python_version: str, arch: str) -> None:
    machine = ARCHES[arch]
    platforms = [arg for tag in MANYLINUX_TAGS for arg in ("--platform", f"{tag}_{machine}")]
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(target), "--implementation", "cp", "--python-version", python_version,
        "--only-binary=:all:", *platforms, *runtime_requirements(),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def build(out: Path, python_version: str, arch: str) -> Artefact:
    with tempfile.TemporaryDirectory(prefix="drugsync-package-") as folder:
        staging = Path(folder)
        install_wheels(staging, python_version, arch)
        for package in PACKAGES:
            shutil.copytree(ROOT / package, staging / package, ignore=shutil.ignore_patterns("__pycache__"))
        out.parent.mkdir(parents=True, exist_ok=True)
        unzipped = 0
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(staging.rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    archive.write(file, file.relative_to(staging))
                    unzipped += file.stat().st_size
    return Artefact(out, out.stat().st_size, unzipped)


def main(argv: list[str] | None = None) -> int:
    python_version, arch = configured_target()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python-version", default=python_version)
    parser.add_argument("--arch", default=arch, choices=sorted(ARCHES))
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "drugsync-lambda.zip")
    args = parser.parse_args(argv)
    artefact = build(args.out, args.python_version, args.arch)
    print(
        f"{artefact.path}: python{args.python_version} {args.arch},"
        f" {artefact.zipped_bytes / 2**20:.1f} MiB zipped, {artefact.unzipped_bytes / 2**20:.1f} MiB unzipped"
    )
    for problem in artefact.problems():
        print(f"FAIL {problem}")
    return 1 if artefact.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
