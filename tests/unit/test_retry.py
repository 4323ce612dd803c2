import pytest

from shared.errors import EmbeddingError, UnavailableError
from shared.retry import RetryPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def _policy(clock: FakeClock, budget: float = 30.0) -> RetryPolicy:
    return RetryPolicy(
        base_seconds=1.0, cap_seconds=8.0, budget_seconds=budget,
        sleep=clock.sleep, clock=lambda: clock.now, jitter=lambda ceiling: ceiling,
    )  # fmt: skip


def test_transient_failures_are_retried_with_exponential_backoff_until_success() -> None:
    clock = FakeClock()
    failures = iter([UnavailableError("throttled")] * 4)

    def action() -> str:
        error = next(failures, None)
        if error:
            raise error
        return "ok"

    policy = _policy(clock)
    assert policy.call(action) == "ok"
    assert clock.pauses == [1.0, 2.0, 4.0, 8.0]
    assert policy.retries == 4


def test_the_budget_bounds_the_waiting_then_the_error_surfaces() -> None:
    clock = FakeClock()

    def always() -> None:
        raise UnavailableError("down")

    with pytest.raises(UnavailableError):
        _policy(clock, budget=10.0).call(always)
    assert sum(clock.pauses) < 10.0
    assert clock.pauses == [1.0, 2.0, 4.0]


def test_errors_that_retrying_cannot_fix_are_raised_at_once() -> None:
    clock = FakeClock()

    def rejected() -> None:
        raise EmbeddingError("input too long")

    with pytest.raises(EmbeddingError):
        _policy(clock).call(rejected)
    assert clock.pauses == []
