"""The embedded stack every benchmark runs on: its own state folder, started and stopped around it."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.probes import children
from console import local_stack
from console.services import Services
from shared.settings import Settings


@contextmanager
def embedded_stack(
    options: local_stack.QueueOptions | None = None,
) -> Iterator[tuple[Services, local_stack.StackState, Path]]:
    """Start a stack in a temporary folder (this process's settings point at it); yield its services,
    its state and the folder; stop it and remove the folder after."""
    with tempfile.TemporaryDirectory(prefix="drugsync-bench-") as folder:
        os.environ["DRUGSYNC_STATE_DIR"] = folder
        state = local_stack.up(options)
        os.environ.update(state.env)
        try:
            with Services(Settings()) as services:
                yield services, state, Path(folder)
        finally:
            local_stack.stop(state)


def give_redis_a_core(pids: dict[str, int]) -> str:
    """Pin the Redis server to one CPU and the rest of the stack (this process and the workers it
    starts, Postgres and its backends, the SQS server) to the others; returns what was done.

    On AWS the Redis server has a node of its own, and the consumers run on Lambda. Here they share
    the machine: unpinned, the consumers, Postgres and the SQS server take turns on Redis's core (its
    CPU per document rose by up to a tenth under row C's load), so a row that runs more processes
    beside Redis pays more for the same writes. Pinned, every row writes to a server with a core of
    its own. Needs two CPUs; with one, everything shares it.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "Redis shares the one CPU with everything else"
    server, rest = {cpus[0]}, set(cpus[1:])
    _pin(pids["redis"], server)
    postmaster = pids.get("postgres")
    for pid in [os.getpid(), pids.get("sqs"), postmaster, *(children(postmaster) if postmaster else [])]:
        if pid is not None:
            _pin(pid, rest)  # processes they start later inherit it
    return f"Redis pinned to CPU {cpus[0]}, the rest of the stack to CPU {', '.join(map(str, sorted(rest)))}"


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of the process (an affinity is a thread's, not a process's)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)
