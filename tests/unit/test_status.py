import uuid
from datetime import UTC, datetime, timedelta

from console.status import STALL_SECONDS, Counts, advice, describe_run, progress_bar, run_state
from shared.ports import RunProgress
from shared.queue import QueueDepth

STARTED = datetime(2026, 1, 1, tzinfo=UTC)


def _progress(done: int, drugs: int, last: datetime | None, finished: datetime | None = None) -> RunProgress:
    return RunProgress(uuid.uuid4(), STARTED, 100, 1000, 10, done, drugs, last, finished_at=finished)


def test_a_finished_run_reports_its_rate_over_its_own_duration() -> None:
    finished = STARTED + timedelta(seconds=4)
    run = describe_run(
        _progress(10, 1000, STARTED + timedelta(seconds=3), finished), STARTED + timedelta(hours=1)
    )
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


def test_an_unfinished_run_with_nothing_queued_and_nothing_moving_is_stalled() -> None:
    quiet = STARTED + timedelta(seconds=STALL_SECONDS + 1)
    stuck = _progress(4, 400, STARTED)

    assert run_state(stuck, QueueDepth(0, 0, 0), quiet) == "stalled"
    assert run_state(stuck, QueueDepth(0, 0, 1), quiet) == "running"  # a deferred continuation waits
    assert run_state(stuck, QueueDepth(0, 1, 0), quiet) == "running"
    assert run_state(stuck, QueueDepth(0, 0, 0), STARTED + timedelta(seconds=30)) == "running"
    assert run_state(stuck, None, quiet) == "running"  # without the queue, nobody can tell
    finished = _progress(10, 1000, STARTED, finished=STARTED + timedelta(seconds=5))
    assert run_state(finished, QueueDepth(0, 0, 0), quiet) == "complete"
    assert "drugsync resume" in (advice(describe_run(stuck, quiet, QueueDepth(0, 0, 0))) or "")


def test_a_finished_run_whose_end_was_not_announced_says_how_to_announce_it() -> None:
    finished = STARTED + timedelta(seconds=5)
    run = describe_run(_progress(10, 1000, STARTED, finished=finished), STARTED + timedelta(hours=1))
    assert run["announced"] is False
    assert "drugsync resume" in (advice(run) or "")
    announced = RunProgress(uuid.uuid4(), STARTED, 100, 1000, 10, 10, 1000, STARTED, finished_at=finished,
                            announced_at=finished)  # fmt: skip
    assert advice(describe_run(announced, STARTED + timedelta(hours=1))) is None
