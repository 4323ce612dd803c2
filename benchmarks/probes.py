"""What the benchmarks read from the servers and processes they measure."""

import resource
from collections.abc import Iterable
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
