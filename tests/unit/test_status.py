import uuid
from datetime import UTC, datetime, timedelta

from console.status import Counts, describe_run, progress_bar
from shared.ports import RunProgress

STARTED = datetime(2026, 1, 1, tzinfo=UTC)


def _progress(done: int, drugs: int, last: datetime | None) -> RunProgress:
    return RunProgress(uuid.uuid4(), STARTED, 100, 1000, 10, done, drugs, last)


def test_a_finished_run_reports_its_rate_over_its_own_duration() -> None:
    run = describe_run(_progress(10, 1000, STARTED + timedelta(seconds=4)), STARTED + timedelta(hours=1))
    assert run["state"] == "complete"
    assert run["elapsed_seconds"] == 4.0
    assert run["drugs_per_second"] == 250.0


def test_a_running_run_reports_elapsed_until_now() -> None:
    run = describe_run(_progress(4, 400, STARTED + timedelta(seconds=1)), STARTED + timedelta(seconds=8))
    assert run["state"] == "running"
    assert run["drugs_per_second"] == 50.0


def test_progress_bar() -> None:
    assert progress_bar(1, 4, width=8) == "[##......]  25.0%"
    assert progress_bar(0, 0, width=4) == "[####] 100.0%"


def test_counts_are_consistent_only_when_all_three_agree_without_failures() -> None:
    assert Counts(5, 5, 5, 0).consistent
    assert not Counts(5, 5, 4, 0).consistent
    assert not Counts(5, 5, 5, 1).consistent
