"""What the benchmarks read from the servers and processes they measure."""

import os
import resource
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis


def used_memory(client: redis.Redis) -> int:
    """INFO memory's used_memory: every allocation of the server, the search module's index included."""
    return int(client.info("memory")["used_memory"])


def redis_cpu_seconds(client: redis.Redis) -> float:
    """CPU the Redis server has used since it started (user + system, INFO cpu)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def peak_rss_kb(pid: int) -> int | None:
    """The process's peak resident set (VmHWM, KiB) from /proc; None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def own_peak_rss_kb() -> int:
    """This process's peak resident set (KiB on Linux), from getrusage."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (postgres: the postmaster's backends)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class PeakWatch:
    """The highest VmHWM seen per named group of processes, sampled whenever asked."""

    def __init__(self) -> None:
        self.peaks_kb: dict[str, int] = {}

    def sample(self, group: str, pids: Iterable[int | None]) -> None:
        for pid in pids:
            peak = None if pid is None else peak_rss_kb(pid)
            if peak is not None and peak > self.peaks_kb.get(group, 0):
                self.peaks_kb[group] = peak


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU the process has used (/proc/<pid>/stat); None once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def consumer_workers() -> list[int]:
    """This process's children that run the local Lambda bootstrap: the event source's workers."""
    found = []
    for pid in children(os.getpid()):
        try:
            if b"bootstrap.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


class ProcessWatch:
    """A per-process counter (CPU used, by default) since each process was first seen, from samples
    (a process's last sample counts)."""

    def __init__(self, read: Callable[[int], float | None] = cpu_seconds) -> None:
        self._read = read
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def sample(self, pids: Iterable[int]) -> None:
        for pid in pids:
            used = self._read(pid)
            if used is not None:
                self._first.setdefault(pid, used)
                self._last[pid] = used

    @property
    def seconds(self) -> float:
        return sum(self._last[pid] - self._first[pid] for pid in self._last)


@contextmanager
def sampling(sample: Callable[[], None], every_seconds: float) -> Iterator[None]:
    """Call `sample` now, every `every_seconds` while the block runs, and once more at its end."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_seconds):
            sample()

    sample()
    sampler = threading.Thread(target=loop, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        sample()


def run_queue_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Time the process's threads have spent runnable but waiting for a CPU (schedstat's run_delay,
    summed over its threads); None where the kernel does not report it or the process is not there.

    A thread that has ended takes its wait with it, and time the host took the machine's CPUs away
    is not counted: for a server's long-lived threads, a lower bound."""
    tasks = proc / str(pid) / "task"
    try:
        names = [task.name for task in tasks.iterdir()]
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    waited = 0
    for name in names:
        try:
            waited += int((tasks / name / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        except (PermissionError, IndexError, ValueError):
            return None
    return waited / 1e9


def redis_waited(client: redis.Redis) -> float | None:
    """run_queue_seconds of the Redis server the client talks to: the embedded stack's, on this machine."""
    return run_queue_seconds(int(client.info("server")["process_id"]))


class ServerMeter:
    """The Redis server's CPU, and its time waiting for one, from its creation to each reading."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._cpu = redis_cpu_seconds(client)
        self._waited = redis_waited(client)

    def cpu(self) -> float:
        return redis_cpu_seconds(self._client) - self._cpu

    def waited(self) -> str:
        """How long the server was runnable but waited for a CPU, as a row's setup says it."""
        now = redis_waited(self._client)
        if now is None or self._waited is None:
            return "Redis's wait for a CPU not reported"
        return f"Redis waited {now - self._waited:.2f} s for a CPU"
