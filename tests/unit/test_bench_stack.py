"""The benchmarks' hold on the processes they measure: the server's scheduling priority and its wait
for a CPU, read from /proc (Linux, as the benchmarks' machines are)."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import probes
from benchmarks.probes import ProcessWatch, ServerMeter, run_queue_seconds
from benchmarks.stack import favour_redis

# Two threads, as redis-server runs several: a priority set on the main thread alone is not the server's.
SLEEPER = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"


@pytest.fixture
def server() -> Iterator[int]:
    """A process of two threads alone in its own session, as the embedded stack starts redis-server."""
    process = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)
    try:
        while len(list(Path(f"/proc/{process.pid}/task").iterdir())) < 2:
            time.sleep(0.01)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def _no_such_pid() -> int:
    """A pid no process can have (above the kernel's largest)."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def test_the_server_gets_the_priority_asked_for_on_its_session_and_its_threads(server: int) -> None:
    # GIVEN a server process in a session of its own
    # WHEN the benchmark favours it (a positive nice: lowering one needs privilege this test may lack)
    said = favour_redis(server, 7)

    # THEN its threads run at that nice and, where the kernel groups sessions, so does its session
    assert said.startswith("the Redis server at nice 7")
    assert {
        os.getpriority(os.PRIO_PROCESS, int(task.name)) for task in Path(f"/proc/{server}/task").iterdir()
    } == {7}
    autogroup = Path(f"/proc/{server}/autogroup")
    if autogroup.exists():
        assert autogroup.read_text().split()[-1] == "7"
        assert "autogroup" in said


def test_a_server_that_cannot_be_favoured_is_named_and_nothing_is_raised() -> None:
    # GIVEN no such process
    # WHEN the benchmark favours it, THEN it says the priority was not set, and why
    said = favour_redis(_no_such_pid(), -5)
    assert said.startswith("the Redis server not set to nice -5 (")
    assert "shares CPU as started" in said


def test_the_wait_for_a_cpu_is_each_threads_run_delay_summed(tmp_path: Path) -> None:
    # GIVEN a process of two threads as /proc shows them: on-CPU ns, waiting ns, timeslices
    for task, schedstat in (("42", "900000000 1250000000 7"), ("43", "100 250000000 2")):
        (tmp_path / "42" / "task" / task).mkdir(parents=True)
        (tmp_path / "42" / "task" / task / "schedstat").write_text(schedstat + "\n")

    # THEN its wait is both threads' second field, in seconds; no such process: None
    assert run_queue_seconds(42, proc=tmp_path) == pytest.approx(1.5)
    assert run_queue_seconds(41, proc=tmp_path) is None


def test_the_wait_of_a_live_process_is_read_from_the_real_proc(server: int) -> None:
    waited = run_queue_seconds(server)
    assert waited is not None
    assert waited >= 0
    assert run_queue_seconds(_no_such_pid()) is None


class _Server:
    """INFO as a Redis server answers it: its pid, and CPU that grows by a second at each reading."""

    def __init__(self) -> None:
        self.cpu = 10.0

    def info(self, section: str) -> dict[str, object]:
        if section == "server":
            return {"process_id": 4242}
        self.cpu += 1.0
        return {"used_cpu_user": self.cpu, "used_cpu_sys": 0.0}


def test_the_server_meter_reports_what_the_server_used_and_waited_since_it_began(monkeypatch) -> None:
    # GIVEN a server (pid 4242 by INFO) that has waited 2.0 s for a CPU, then 3.25 s by the end
    waits = iter([2.0, 3.25])
    monkeypatch.setattr(probes, "run_queue_seconds", lambda pid: next(waits) if pid == 4242 else None)
    server = _Server()

    # WHEN metered from before the work to after it
    meter = ServerMeter(server)  # type: ignore[arg-type]
    used, said = meter.cpu(), meter.waited()

    # THEN the CPU and the wait are the differences, read from the server's own process
    assert used == pytest.approx(1.0)
    assert said == "Redis waited 1.25 s for a CPU"


def test_a_server_whose_wait_is_unknown_says_so(monkeypatch) -> None:
    monkeypatch.setattr(probes, "run_queue_seconds", lambda pid: None)
    assert ServerMeter(_Server()).waited() == "Redis's wait for a CPU not reported"  # type: ignore[arg-type]


def test_a_process_watch_sums_each_process_since_it_was_first_seen() -> None:
    # GIVEN readings of two processes; the second first seen later, the first gone at the end
    readings = {1: iter([5.0, 6.0, None]), 2: iter([1.0, 1.5])}
    watch = ProcessWatch(lambda pid: next(readings[pid]))
    watch.sample([1])
    watch.sample([1, 2])
    watch.sample([1, 2])

    # THEN each counts from its first reading to its last: 1.0 + 0.5
    assert watch.seconds == pytest.approx(1.5)
