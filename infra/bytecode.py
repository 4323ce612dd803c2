"""Bytecode for the zip, and the cold import it saves.

Lambda unpacks the zip into /var/task, which is read-only: without __pycache__ entries in the zip,
every cold start compiles every module it imports. Compiling needs an interpreter of the target's
X.Y (bytecode is version-specific); `unchecked-hash` pycs are used without comparing timestamps
or hashing the source (https://docs.python.org/3/library/compileall.html, PEP 552).
"""

import shutil
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HANDLERS = ("producer.handler", "consumer.handler")
TASK_ROOT = "/var/task"  # LAMBDA_TASK_ROOT: where tracebacks should say the code is
# Test suites inside wheels (numpy's: 2.6 MiB of bytecode zipped) are never imported by a handler.
NOT_COMPILED = r"/tests/"
_VERSION = "import sys; print('.'.join(map(str, sys.version_info[:3])))"


def find_interpreter(python_version: str, explicit: Path | None = None) -> tuple[Path, str] | None:
    """(path, full version) of an interpreter of `python_version` (X.Y), or None if there is none."""
    candidates = [explicit] if explicit else _candidates(python_version)
    for candidate in candidates:
        full = _version_of(candidate)
        if full is not None and full.rsplit(".", 1)[0] == python_version:
            return candidate, full
    if explicit:
        raise SystemExit(f"--target-python {explicit} is not a python{python_version} interpreter")
    return None


def _candidates(python_version: str) -> list[Path]:
    on_path = shutil.which(f"python{python_version}")
    pyenv = sorted(Path.home().glob(f".pyenv/versions/{python_version}*/bin/python{python_version}"))
    here = [Path(sys.executable)] if sys.version.startswith(f"{python_version}.") else []
    return here + ([Path(on_path)] if on_path else []) + pyenv


def _version_of(interpreter: Path) -> str | None:
    try:
        done = subprocess.run(
            [str(interpreter), "-I", "-c", _VERSION], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def compile_tree(interpreter: Path, folder: Path) -> None:
    """__pycache__/*.pyc beside each .py under `folder` but tests, naming /var/task/... in tracebacks."""
    command = [
        str(interpreter), "-I", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
        "-s", str(folder), "-p", TASK_ROOT, "-x", NOT_COMPILED, str(folder),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"compileall with {interpreter} failed:\n{done.stdout}{done.stderr}")


def import_times(path: Path, runs: int = 5) -> dict[str, float]:
    """Median seconds to import each handler from the unpacked zip, each run a fresh `python -S -B`."""
    with tempfile.TemporaryDirectory(prefix="drugsync-import-") as folder:
        zipfile.ZipFile(path).extractall(folder)
        return {handler: statistics.median(import_once(Path(folder), handler) for _ in range(runs))
                for handler in HANDLERS}  # fmt: skip


def import_once(code: Path, module: str) -> float:
    """One cold import as in /var/task: nothing written back, so no run reuses another's bytecode."""
    script = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    env = {"PYTHONPATH": str(code), "AWS_DEFAULT_REGION": "us-east-1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-S", "-P", "-B", "-c", script], env=env,
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return float(done.stdout.strip())
