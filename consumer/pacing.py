"""How much of a range fits in the time an invocation has left."""

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")
SAFETY_FACTOR = 1.5  # a chunk may run slower than the ones before it
SMOOTHING = 0.5  # weight of the newest chunk in the running estimate


class Deadline(Protocol):
    """How long the invocation has left."""

    def remaining_seconds(self) -> float: ...


class Pacer:
    """Sizes chunks from the measured seconds per drug so a chunk never runs past the deadline."""

    def __init__(
        self,
        deadline: Deadline,
        margin_seconds: float,
        seconds_per_drug: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deadline = deadline
        self._margin = margin_seconds
        self.seconds_per_drug = seconds_per_drug
        self._clock = clock

    def next_chunk_size(self, chunk_size: int, made_progress: bool, in_flight: int = 0) -> int:
        """Drugs to attempt next; 0 means hand off. Without progress yet, at least one drug is tried.
        `in_flight` drugs are still being written: the time left must hold them too."""
        available = self._time_left()
        fits = int(available / (self.seconds_per_drug * SAFETY_FACTOR)) if available > 0 else 0
        size = max(0, min(chunk_size, fits - in_flight))
        return size if size > 0 or made_progress else 1

    def holds(self, drugs: int) -> bool:
        """Whether the time left, less the margin, still holds `drugs` at the estimated pace (a write
        about to start, once the one before it took longer than it should have)."""
        return self._time_left() >= self.seconds_per_drug * drugs

    def _time_left(self) -> float:
        """Seconds the invocation has left before its hand-off margin."""
        return self._deadline.remaining_seconds() - self._margin

    def timed(self, drugs: int, action: Callable[[], T], probe: bool = False) -> T:
        """Run one chunk and fold its seconds per drug into the estimate; a probe's measure replaces
        the estimate (the configured guess knows nothing of a quota shared with other consumers)."""
        began = self._clock()
        result = action()
        measured = (self._clock() - began) / max(drugs, 1)
        weight = 1.0 if probe else SMOOTHING
        self.seconds_per_drug = weight * measured + (1 - weight) * self.seconds_per_drug
        return result
