"""Retry transient failures inside an invocation: exponential backoff, full jitter, a time budget.

https://aws.amazon.com/builders-library/timeouts-retries-and-backoff-with-jitter/
"""

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from shared.errors import DrugSyncError

T = TypeVar("T")


@dataclass
class RetryPolicy:
    """Retries errors marked retryable until `budget_seconds` would be exceeded."""

    base_seconds: float = 0.2
    cap_seconds: float = 10.0
    budget_seconds: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[float], float] = field(default=lambda ceiling: random.uniform(0, ceiling))
    on_retry: Callable[[DrugSyncError], None] = field(default=lambda error: None)
    retries: int = 0

    def call(self, action: Callable[[], T], budget_seconds: float | None = None) -> T:
        """Run `action`; on a retryable DrugSyncError wait and try again while the budget allows."""
        budget = self.budget_seconds if budget_seconds is None else min(budget_seconds, self.budget_seconds)
        deadline = self.clock() + budget
        attempt = 0
        while True:
            try:
                return action()
            except DrugSyncError as error:
                if not error.retryable:
                    raise
                pause = self.jitter(min(self.cap_seconds, self.base_seconds * 2**attempt))
                if self.clock() + pause >= deadline:
                    raise
                attempt += 1
                self.retries += 1
                self.on_retry(error)
                self.sleep(pause)
