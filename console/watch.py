"""`drugsync status --watch`: the dashboard's view of a run, redrawn until the run ends.

Each refresh reads the ledger and the queue depths only. The three counts (Postgres eligible, Redis
documents, index documents) are read once, in the last frame: at 494,000 drugs they cost a SCAN of
every key and a count over the table, and while a run is writing they cannot agree anyway.
"""

import argparse
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TextIO
from uuid import UUID

from console.status import (
    STALL_SECONDS,
    Counts,
    StatusReport,
    advice,
    gather_counts,
    gather_progress,
    progress_bar,
    render_counts,
)
from shared.describe import describe_error
from shared.errors import ConfigError, UnavailableError
from shared.ledger import PostgresLedger
from shared.ports import Catalog
from shared.queue import SqsQueue
from shared.redis_store import RedisDocumentStore

DEFAULT_INTERVAL = 2.0
MIN_INTERVAL = 0.1  # each refresh is a ledger query and two GetQueueAttributes calls
RATE_WINDOW = timedelta(seconds=60)  # the dashboard's period: ranges land in bursts, a minute smooths them
UNKNOWN = "—"
MAX_REFRESH_FAILURES = 5  # in a row: a passing outage is shown and waited out, a lasting one ends the watch

# https://invisible-island.net/xterm/ctlseqs/ctlseqs.html: CUU (cursor up n rows), ED 0 (erase below)
CURSOR_UP = "\x1b[{rows}A"
ERASE_BELOW = "\x1b[J"


@dataclass(frozen=True)
class Sample:
    """The ledger's drugs done at one refresh."""

    at: datetime
    drugs_done: int


def record_sample(samples: tuple[Sample, ...], sample: Sample) -> tuple[Sample, ...]:
    """Samples of the last RATE_WINDOW, plus always the one before the newest (a long interval)."""
    kept = (*samples, sample)
    recent = tuple(s for s in kept if sample.at - s.at <= RATE_WINDOW)
    return kept[-2:] if len(recent) < 2 else recent


def recent_rate(samples: tuple[Sample, ...]) -> float | None:
    """Drugs per second between the oldest and newest sample; None until two samples apart in time."""
    if len(samples) < 2:
        return None
    seconds = (samples[-1].at - samples[0].at).total_seconds()
    if seconds <= 0:
        return None
    return max(samples[-1].drugs_done - samples[0].drugs_done, 0) / seconds


def eta_seconds(remaining: int, rate: float | None) -> float | None:
    """Seconds until the remaining drugs are done at this rate; None when the rate says nothing."""
    if remaining <= 0:
        return 0.0
    if not rate:
        return None
    return remaining / rate


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return UNKNOWN
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def watch_outcome(report: StatusReport) -> int | None:
    """None while the run goes on; else the exit code: 0 for a complete, announced run, 1 otherwise."""
    run = report.run
    assert run is not None
    state = run["state"]
    if state in ("stalled", "enqueue_failed", "superseded"):
        return 1  # a superseded run never finishes: watching it longer shows nothing
    if not state.startswith("complete"):
        return None  # running or sweeping
    if not run["announced"] and report.queue is not None and not report.queue.empty:
        return None  # the consumer that finished it announces it within the same message
    return 0 if state == "complete" and run["announced"] else 1


def render_frame(report: StatusReport, samples: tuple[Sample, ...], now: datetime, interval: float) -> str:
    """One refresh as text: what the dashboard shows, plus the run's state, progress, rate and ETA."""
    run = report.run
    assert run is not None
    rate = recent_rate(samples)
    eta = eta_seconds(run["drugs_total"] - run["drugs_done"], rate)
    lines = [
        f"{now:%H:%M:%S} UTC  run {run['run_id']}  {run['state']}  (every {interval:g}s, Ctrl-C stops)",
        f"{progress_bar(run['drugs_done'], run['drugs_total'])}  {run['drugs_done']:,}/"
        f"{run['drugs_total']:,} drugs  {run['ranges_done']:,}/{run['ranges_total']:,} ranges",
        f"rate {UNKNOWN if rate is None else f'{rate:,.0f}'} drugs/s (last {RATE_WINDOW.seconds}s)"
        f"  ETA {format_duration(eta)}  elapsed {format_duration(run['elapsed_seconds'])}",
        _queue_line(report),
    ]
    if run["failed_drugs"]:
        lines.append(f"{run['failed_drugs']:,} drugs failed and wait in the DLQ: see `drugsync dlq`")
    if report.counts is not None:
        lines.append(render_counts(report.counts))
    if (todo := advice(run)) and watch_outcome(report) is not None:
        lines.append(f"{run['state'].upper()}: {todo}")
    return "\n".join(lines)


def _queue_line(report: StatusReport) -> str:
    queue, dead = report.queue, report.dead_letter
    work = (
        f"queue {queue.visible:,} visible, {queue.in_flight:,} in flight, {queue.delayed:,} delayed"
        if queue
        else "queue: no QUEUE_URL"
    )
    return f"{work}  |  DLQ {dead.visible:,}" if dead else f"{work}  |  DLQ: no DLQ_URL"


def rows_taken(frame: str, columns: int) -> int:
    """Terminal rows the frame occupies once long lines wrap."""
    width = max(columns, 1)
    return sum(max(1, math.ceil(len(line) / width)) for line in frame.split("\n"))


class Screen:
    """Shows frames: redrawn in place on a terminal, one after another with a blank line elsewhere."""

    def __init__(self, out: TextIO, in_place: bool, columns: Callable[[], int] | None = None) -> None:
        self._out = out
        self._in_place = in_place
        self._columns = columns or (lambda: shutil.get_terminal_size().columns)
        self._rows = 0  # rows of the frame on screen, 0 before the first

    def show(self, frame: str) -> None:
        if self._rows and self._in_place:
            self._out.write(CURSOR_UP.format(rows=self._rows) + ERASE_BELOW)
        elif self._rows:
            self._out.write("\n")
        self._out.write(frame + "\n")
        self._out.flush()
        self._rows = rows_taken(frame, self._columns())


@dataclass(frozen=True)
class Progress:
    """What moved last, as the watch saw it: a run whose queue waits with nothing taken is worth a word."""

    marker: tuple[int, int, int]  # ranges done, drugs done, messages in flight
    since: datetime

    def seen(self, report: StatusReport, now: datetime) -> "Progress":
        run, queue = report.run, report.queue
        assert run is not None
        marker = (run["ranges_done"], run["drugs_done"], queue.in_flight if queue else 0)
        return self if marker == self.marker else Progress(marker, now)


def waiting_hint(report: StatusReport, progress: Progress, now: datetime) -> str | None:
    """Messages visible, none taken and nothing done for STALL_SECONDS: nobody is consuming."""
    queue = report.queue
    if (
        queue is None
        or not queue.visible
        or queue.in_flight
        or (now - progress.since).total_seconds() < STALL_SECONDS
    ):
        return None
    return (
        f"WAITING: {queue.visible:,} messages visible and none taken for {STALL_SECONDS // 60} min:"
        " is the consumer's event source enabled, its concurrency above 0?"
        " (locally: is `drugsync work` running?)"
    )


def watch(
    read: Callable[[datetime], StatusReport],
    count: Callable[[], Counts],
    screen: Screen,
    interval: float,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
) -> int:
    """Show a frame every `interval` seconds until the run ends; returns the exit code.

    A refresh that fails for a passing reason (the database or SQS briefly unreachable) is said on
    the screen and tried again, MAX_REFRESH_FAILURES times in a row before the watch gives up.
    """
    samples: tuple[Sample, ...] = ()
    progress: Progress | None = None
    failures = 0
    while True:
        now = clock()
        try:
            report = read(now)
        except UnavailableError as error:
            failures += 1
            if failures >= MAX_REFRESH_FAILURES:
                raise
            screen.show(f"{now:%H:%M:%S} UTC  refresh failed ({failures}/{MAX_REFRESH_FAILURES}),"
                        f" trying again in {interval:g}s: {describe_error(error)}")  # fmt: skip
            sleep(interval)
            continue
        failures = 0
        if report.run is None:
            raise ConfigError("the run is not in the ledger: see `drugsync runs` for the run ids")
        samples = record_sample(samples, Sample(now, report.run["drugs_done"]))
        progress = (progress or Progress((-1, -1, -1), now)).seen(report, now)
        outcome = watch_outcome(report)
        if outcome is not None:
            report = replace(report, counts=count())
        frame = render_frame(report, samples, now, interval)
        hint = waiting_hint(report, progress, now) if outcome is None else None
        screen.show(f"{frame}\n{hint}" if hint else frame)
        if outcome is not None:
            return outcome
        sleep(interval)


def watch_run(
    ledger: PostgresLedger,
    catalog: Catalog,
    store: Callable[[], RedisDocumentStore],
    queue: SqsQueue | None,
    dead_letter: SqsQueue | None,
    run_id: UUID | None,
    interval: float,
    out: TextIO = sys.stdout,
) -> int:
    """Watch `run_id` (default: the latest run, chosen once) on the real ledger, queues and stores.

    `store` gives the generation readers use when the counts are taken: a rebuild moves them at its end.
    """
    ledger.ensure_schema()
    chosen = run_id or ledger.latest_run_id()
    if chosen is None:
        raise ConfigError("no sync run recorded yet: nothing to watch (start one with `drugsync sync`)")
    return watch(
        read=lambda now: gather_progress(ledger, queue, dead_letter, chosen, now),
        count=lambda: gather_counts(catalog, store()),
        screen=Screen(out, in_place=out.isatty()),
        interval=interval,
        clock=lambda: datetime.now(UTC),
        sleep=time.sleep,
    )


def interval_seconds(text: str) -> float:
    """argparse type of --interval: seconds, at least MIN_INTERVAL."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"{text} s is too short an interval (at least {MIN_INTERVAL} s)")
    return value
