"""The benchmarks' hold on the processes they measure: the server's scheduling priority and its wait
for a CPU, read from /proc (Linux, as the benchmarks' machines are)."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.probes import run_queue_seconds
from benchmarks.stack import favour_redis


@pytest.fixture
def server() -> Iterator[int]:
    """A process alone in its own session, as the embedded stack starts redis-server."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def _gone_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


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
    # GIVEN a process that has ended
    # WHEN the benchmark favours it, THEN it says the priority was not set, and why
    said = favour_redis(_gone_pid(), -5)
    assert said.startswith("the Redis server not set to nice -5 (")
    assert "shares CPU as started" in said


def test_the_wait_for_a_cpu_is_read_for_a_live_process_and_none_for_an_ended_one(server: int) -> None:
    waited = run_queue_seconds(server)
    assert waited is not None
    assert waited >= 0
    assert run_queue_seconds(_gone_pid()) is None
