"""The embedded stack every benchmark runs on: its own state folder, started and stopped around it."""

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


REDIS_NICE = -20  # the server first in line for a CPU, its clients still free to use both cores


def add_redis_nice_argument(parser: argparse.ArgumentParser) -> None:
    """--redis-nice, as make bench and make bench-full both take it."""
    parser.add_argument(
        "--redis-nice",
        type=int,
        default=REDIS_NICE,
        help=f"the Redis server's scheduling priority, -20..19 (default {REDIS_NICE}; 0 as started)",
    )


def favour_redis(pid: int, nice: int = REDIS_NICE) -> str:
    """Set the Redis server's scheduling priority to `nice`; returns what was done, or why not.

    On AWS the server has a node of its own and the consumers run on Lambda; here they share two
    cores. Linux shares CPU time between sessions (autogroups) before processes, and the server is
    alone in its own session: under row C's load it waited 0.22-0.40 s of a 6 s run for a CPU (row
    D: 0.01-0.04 s), time the consumers' session took; at nice -10 0.08-0.11 s, at -20 0.03-0.05 s.
    The nice of its session (and of its threads, where autogroups are off) puts it first in line
    without confining anyone to one core, as pinning it did (that slowed row C). Lowering a nice
    value needs CAP_SYS_NICE.
    """
    autogroup, done = Path(f"/proc/{pid}/autogroup"), []
    try:
        if autogroup.exists():  # kernels built without autogroups share CPU between processes alone
            autogroup.write_text(str(nice))
            done.append("its session's autogroup")
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
        done.append("its threads")
    except OSError as error:
        reason = error.strerror or str(error)
        if done:
            return f"the Redis server at nice {nice} for {done[0]} only, not its threads ({reason})"
        return f"the Redis server not set to nice {nice} ({reason}): it shares CPU as started"
    return f"the Redis server at nice {nice} ({' and '.join(done)})"
