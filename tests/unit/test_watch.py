"""`status --watch`: rate, ETA, when the watch ends, the frames, and the loop driven by a fake clock."""

import argparse
import io
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from console.cli import main
from console.status import STALL_SECONDS, Counts, StatusReport, describe_run
from console.watch import (
    CURSOR_UP,
    ERASE_BELOW,
    Sample,
    Screen,
    eta_seconds,
    format_duration,
    interval_seconds,
    recent_rate,
    record_sample,
    render_frame,
    rows_taken,
    watch,
    watch_outcome,
)
from shared.errors import ConfigError, UnavailableError
from shared.ports import RunProgress
from shared.queue import QueueDepth

STARTED = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
DRAINED = QueueDepth(0, 0, 0)
AGREEING = Counts(1000, 1000, 1000, 0)


def at(seconds: float) -> datetime:
    return STARTED + timedelta(seconds=seconds)


def report(
    now: datetime,
    ranges: int,
    queue: QueueDepth | None,
    *,
    finished: bool = False,
    announced: bool = False,
    failures: int = 0,
    enqueue_error: str | None = None,
) -> StatusReport:
    """What gather_progress reads for a run of 10 ranges of 100 drugs, `ranges` of them done."""
    progress = RunProgress(
        RUN_ID, STARTED, 100, 1000, 10, ranges, ranges * 100, at(1) if ranges else None,
        open_failures=failures, enqueue_error=enqueue_error, enqueued_at=STARTED,
        swept_at=now if finished else None, finished_at=now if finished else None,
        announced_at=now if announced else None,
    )  # fmt: skip
    return StatusReport(describe_run(progress, now, queue), queue, DRAINED, None)


# rate and ETA


def test_the_rate_is_the_drugs_done_between_the_oldest_and_newest_sample_of_the_window() -> None:
    samples: tuple[Sample, ...] = ()
    for seconds, done in [(0, 0), (2, 100), (4, 300), (10, 1000)]:
        samples = record_sample(samples, Sample(at(seconds), done))
    assert recent_rate(samples) == 100.0


def test_samples_older_than_the_window_leave_it_so_the_rate_follows_a_slowdown() -> None:
    samples: tuple[Sample, ...] = ()
    for seconds, done in [(0, 0), (30, 3000), (90, 3600), (100, 3700)]:
        samples = record_sample(samples, Sample(at(seconds), done))
    assert samples[0].at == at(90)
    assert recent_rate(samples) == 10.0


def test_an_interval_longer_than_the_window_still_measures_against_the_previous_refresh() -> None:
    samples = record_sample((Sample(at(0), 0),), Sample(at(120), 600))
    assert recent_rate(samples) == 5.0


def test_the_rate_is_unknown_from_one_sample() -> None:
    assert recent_rate(record_sample((), Sample(at(0), 500))) is None


@pytest.mark.parametrize(
    ("remaining", "rate", "expected"),
    [(1000, 100.0, 10.0), (1000, None, None), (1000, 0.0, None), (0, None, 0.0), (0, 0.0, 0.0)],
)
def test_eta_is_remaining_over_rate_and_unknown_without_a_rate(
    remaining: int, rate: float | None, expected: float | None
) -> None:
    assert eta_seconds(remaining, rate) == expected


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "—"), (0, "0s"), (4.2, "5s"), (65, "1m05s"), (3725, "1h02m")]
)
def test_durations_read_as_hours_minutes_seconds(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


# when the watch ends


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (report(at(5), 4, QueueDepth(6, 2, 0)), None),
        (report(at(5), 10, QueueDepth(0, 1, 0)), None),  # sweeping
        (report(at(5), 10, DRAINED, finished=True, announced=True), 0),
        (report(at(5), 10, DRAINED, finished=True, announced=True, failures=3), 1),
        (report(at(5), 10, QueueDepth(0, 1, 0), finished=True), None),  # its consumer is announcing
        (report(at(5), 10, DRAINED, finished=True), 1),  # nobody is left to announce it
        (report(at(5), 0, DRAINED, enqueue_error="SQS down"), 1),
        (report(at(STALL_SECONDS + 5), 4, DRAINED), 1),  # stalled
    ],
)
def test_the_watch_ends_on_a_terminal_state_and_only_a_complete_announced_run_exits_0(
    case: StatusReport, expected: int | None
) -> None:
    assert watch_outcome(case) == expected


# the frame


def test_a_frame_shows_what_the_dashboard_shows_with_progress_rate_and_eta() -> None:
    now = at(10)
    frame = render_frame(report(now, 4, QueueDepth(5, 2, 1)), (Sample(at(0), 0), Sample(now, 400)), now, 2.0)
    assert f"12:00:10 UTC  run {RUN_ID}  running  (every 2s" in frame
    assert "40.0%  400/1,000 drugs  4/10 ranges" in frame
    assert "rate 40 drugs/s (last 60s)  ETA 15s" in frame
    assert "queue 5 visible, 2 in flight, 1 delayed  |  DLQ 0" in frame
    assert "consistent" not in frame  # counts only in the last frame


def test_the_first_frame_has_no_rate_and_no_eta_yet() -> None:
    now = at(10)
    frame = render_frame(report(now, 4, QueueDepth(5, 2, 1)), (Sample(now, 400),), now, 2.0)
    assert "rate — drugs/s (last 60s)  ETA —" in frame


def test_a_stalled_run_frame_gives_the_advice() -> None:
    now = at(STALL_SECONDS + 5)
    frame = render_frame(report(now, 4, DRAINED), (Sample(now, 400),), now, 2.0)
    assert "STALLED: nothing of it is queued" in frame
    assert f"drugsync resume {RUN_ID}" in frame


# the screen


def test_on_a_terminal_each_frame_replaces_the_rows_of_the_one_before() -> None:
    out = io.StringIO()
    screen = Screen(out, in_place=True, columns=lambda: 10)
    screen.show("a\nbbbbbbbbbbbbbbb\nc")  # the long line wraps to 2 rows of 10 columns
    screen.show("d")
    assert out.getvalue() == "a\nbbbbbbbbbbbbbbb\nc\n" + CURSOR_UP.format(rows=4) + ERASE_BELOW + "d\n"


def test_rows_taken_counts_wrapped_lines_and_empty_ones() -> None:
    assert rows_taken("1234567890\n\n12345678901", 10) == 1 + 1 + 2


def test_without_a_terminal_frames_follow_one_another_with_a_blank_line_and_no_escapes() -> None:
    out = io.StringIO()
    screen = Screen(out, in_place=False, columns=lambda: 10)
    screen.show("one\nframe")
    screen.show("two")
    assert out.getvalue() == "one\nframe\n\ntwo\n"


# the loop, driven by a fake clock


class FakeClock:
    """Time that moves only when the watch sleeps."""

    def __init__(self) -> None:
        self.now = at(0)
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)


def run_watch(script: Sequence[tuple[int, QueueDepth, bool]], clock: FakeClock) -> tuple[int, str, int]:
    """Watch a run whose (ranges done, queue, finished) follow `script`, one entry per refresh."""
    out, reads, counted = io.StringIO(), iter(script), []

    def read(now: datetime) -> StatusReport:
        ranges, queue, finished = next(reads)
        return report(now, ranges, queue, finished=finished, announced=finished)

    def count() -> Counts:
        counted.append(clock.now)
        return AGREEING

    code = watch(read, count, Screen(out, in_place=False), 5.0, clock, clock.sleep)
    return code, out.getvalue(), len(counted)


def test_the_watch_follows_a_draining_queue_until_the_run_completes_then_reads_the_counts_once() -> None:
    clock = FakeClock()
    script = [
        (0, QueueDepth(8, 2, 0), False),
        (2, QueueDepth(6, 2, 0), False),
        (6, QueueDepth(2, 2, 0), False),
        (10, DRAINED, True),
    ]

    code, output, counted = run_watch(script, clock)

    frames = output.split("\n\n")
    assert code == 0
    assert len(frames) == 4
    assert clock.sleeps == [5.0, 5.0, 5.0]
    assert counted == 1
    assert "ETA —" in frames[0]
    assert "rate 40 drugs/s" in frames[1]
    assert "ETA 20s" in frames[1]
    assert "rate 60 drugs/s" in frames[2]
    assert "queue 2 visible" in frames[2]
    last = frames[-1]
    assert "complete" in last
    assert "100.0%" in last
    assert "ETA 0s" in last
    assert "queue 0 visible, 0 in flight, 0 delayed" in last
    assert "-> consistent" in last
    assert all("consistent" not in frame for frame in frames[:-1])


def test_a_run_that_stalls_under_the_watch_ends_it_with_the_advice_and_exit_1() -> None:
    clock = FakeClock()
    quiet = int(STALL_SECONDS / 5.0)
    script = [(4, QueueDepth(0, 1, 0), False)] + [(4, DRAINED, False)] * (quiet + 5)

    code, output, counted = run_watch(script, clock)

    assert code == 1
    assert counted == 1
    assert "STALLED" in output.split("\n\n")[-1]
    assert clock.now == at(605)  # the first refresh 600 s after the last range was done, at 1 s


def test_a_run_missing_from_the_ledger_is_a_clear_error() -> None:
    clock = FakeClock()
    empty = StatusReport(None, DRAINED, DRAINED, None)
    with pytest.raises(ConfigError, match="not in the ledger"):
        watch(lambda now: empty, lambda: AGREEING, Screen(io.StringIO(), False), 1.0, clock, clock.sleep)


# the command line


@pytest.mark.parametrize(("text", "expected"), [("0.5", 0.5), ("2", 2.0), ("0.1", 0.1)])
def test_interval_takes_seconds(text: str, expected: float) -> None:
    assert interval_seconds(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "0.05", "nan", "inf", "soon"])
def test_interval_refuses_what_is_not_a_sensible_period(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"interval|seconds"):
        interval_seconds(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "--watch", "--json"], "choose one"),
        (["status", "--interval", "1"], "add --watch"),
    ],
)
def test_options_that_do_not_go_together_are_refused_in_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_messages_nobody_takes_for_ten_minutes_get_a_hint_and_the_watch_goes_on() -> None:
    clock = FakeClock()
    waiting = QueueDepth(8, 0, 0)  # visible, none in flight: no consumer takes them
    quiet = int(STALL_SECONDS / 5.0)
    script = [(2, waiting, False)] * (quiet + 2) + [(10, DRAINED, True)]

    code, output, _ = run_watch(script, clock)

    frames = output.split("\n\n")
    hinted = [index for index, frame in enumerate(frames) if "WAITING: 8 messages visible" in frame]
    assert code == 0
    assert hinted == [quiet, quiet + 1]  # from the first refresh STALL_SECONDS after the last change
    assert "event source enabled" in frames[quiet]


def test_messages_in_flight_are_being_worked_on_so_no_hint() -> None:
    clock = FakeClock()
    quiet = int(STALL_SECONDS / 5.0)
    script = [(2, QueueDepth(8, 2, 0), False)] * (quiet + 2) + [(10, DRAINED, True)]

    _, output, _ = run_watch(script, clock)

    assert "WAITING" not in output


def test_a_passing_outage_is_shown_and_waited_out_a_lasting_one_ends_the_watch() -> None:
    clock = FakeClock()
    answers: list[StatusReport | Exception] = [
        UnavailableError("postgres: connection refused"),
        UnavailableError("postgres: connection refused"),
        report(at(10), 10, DRAINED, finished=True, announced=True),
    ]

    def read(now: datetime) -> StatusReport:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    out = io.StringIO()
    code = watch(read, lambda: AGREEING, Screen(out, in_place=False), 5.0, clock, clock.sleep)

    assert code == 0
    assert out.getvalue().count("refresh failed") == 2
    assert "trying again in 5s: postgres: connection refused" in out.getvalue()

    def never(now: datetime) -> StatusReport:
        raise UnavailableError("sqs: endpoint unreachable")

    with pytest.raises(UnavailableError):
        watch(never, lambda: AGREEING, Screen(io.StringIO(), in_place=False), 5.0, clock, clock.sleep)
