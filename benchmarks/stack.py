"""The embedded stack every benchmark runs on: its own state folder, started and stopped around it."""

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
