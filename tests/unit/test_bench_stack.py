"""The benchmarks give the Redis server a CPU of its own, every thread of it, and the rest the others."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.stack import give_redis_a_core

THREADED = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"


def affinities(pid: int) -> list[set[int]]:
    """The CPUs each thread of the process may run on."""
    return [os.sched_getaffinity(int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")
def test_redis_gets_one_cpu_for_every_thread_and_the_rest_of_the_stack_the_others() -> None:
    own = os.sched_getaffinity(0)
    cpus = sorted(own)
    redis, sqs = (subprocess.Popen([sys.executable, "-c", THREADED]) for _ in range(2))
    try:
        while len(affinities(redis.pid)) < 2 or len(affinities(sqs.pid)) < 2:
            time.sleep(0.01)  # until their second thread runs
        said = give_redis_a_core({"redis": redis.pid, "sqs": sqs.pid})

        assert affinities(redis.pid) == [{cpus[0]}, {cpus[0]}]
        assert affinities(sqs.pid) == [set(cpus[1:])] * 2
        assert os.sched_getaffinity(0) == set(cpus[1:])  # and the processes this one starts
        assert said.startswith(f"Redis pinned to CPU {cpus[0]}")
    finally:
        for task in Path("/proc/self/task").iterdir():  # every thread of this test process, as it was
            os.sched_setaffinity(int(task.name), own)
        for process in (redis, sqs):
            process.kill()
            process.wait()
