"""`drugsync status`: a run's progress, queue depths and the three counts that must agree."""

from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import redis

from shared.generations import RedisGenerations, describe
from shared.ledger import PostgresLedger
from shared.ports import Catalog, RunProgress
from shared.queue import QueueDepth, SqsQueue
from shared.ratelimit import admissions_per_second
from shared.redis_store import RedisDocumentStore
from shared.settings import Settings
from shared.wiring import quota_key

MAX_LISTED_FAILURES = 50


@dataclass(frozen=True)
class Counts:
    """Eligible rows in Postgres, documents in Redis, documents in the index."""

    postgres_eligible: int
    redis_documents: int
    index_documents: int
    index_failures: int

    @property
    def consistent(self) -> bool:
        return (
            self.postgres_eligible == self.redis_documents == self.index_documents
            and self.index_failures == 0
        )


@dataclass(frozen=True)
class StatusReport:
    """Everything `status` shows, as plain data for --json."""

    run: dict[str, Any] | None
    queue: QueueDepth | None
    dead_letter: QueueDepth | None
    counts: Counts | None  # None while `status --watch` refreshes the run and queues only
    generations: dict[str, Any] | None = None
    quota: dict[str, Any] | None = None  # the shared embedding quota's use, when one is configured

    def to_json(self) -> dict[str, Any]:
        return {
            "generations": self.generations,
            "quota": self.quota,
            "run": self.run,
            "queue": asdict(self.queue) if self.queue else None,
            "dead_letter": asdict(self.dead_letter) if self.dead_letter else None,
            "counts": {**asdict(self.counts), "consistent": self.counts.consistent} if self.counts else None,
        }


STALL_SECONDS = 600  # well beyond a consumer timeout, a deferral's delay is up to 900 s but counted as queued


def run_state(progress: RunProgress, queue: QueueDepth | None, now: datetime) -> str:
    """The ledger's state, or `stalled` when the run is unfinished, nothing of it is queued,
    delayed or in flight, and nothing moved for STALL_SECONDS: no consumer will ever finish it."""
    state = progress.state
    if not progress.active or state == "enqueue_failed" or queue is None or not queue.empty:
        return state
    quiet = (now - progress.last_activity).total_seconds()
    return "stalled" if quiet >= STALL_SECONDS else state


def advice(run: dict[str, Any]) -> str | None:
    """What an operator should do about a run in this state."""
    if run.get("mode") == "incremental" and run["state"] in ("enqueue_failed", "stalled"):
        return (
            "an incremental run: `drugsync sync --incremental --supersede` starts a new one that takes up"
            " this run's changes"
        )
    if run.get("without_generation") and run["state"] in ("enqueue_failed", "stalled"):
        return "its generation could not be opened, so it cannot be resumed: `drugsync sync --supersede`"
    if run["state"] == "enqueue_failed":
        return f"its messages were not all sent: `drugsync resume {run['run_id']}` sends what is not done"
    if run["state"].startswith("complete") and not run["announced"]:
        return (
            "finished, but its end is not announced yet (a consumer died announcing it, or SNS"
            f" failed): `drugsync resume {run['run_id']}` announces it"
        )
    if run["state"] == "superseded":
        return "another run took over its claim: its messages are dropped and it will not finish"
    if run["state"] == "switch_refused":
        return (
            f"readers stay on the current generation: {run['switch_error']}; once fixed, `drugsync sync`"
            f" continues generation {run['generation']} (unchanged drugs are skipped) and switches again"
        )
    if run["state"] == "stalled":
        return (
            f"nothing of it is queued or in flight and nothing moved for {STALL_SECONDS // 60} min:"
            f" see `drugsync dlq`, then `drugsync resume {run['run_id']}`"
        )
    return None


def describe_run(progress: RunProgress, now: datetime, queue: QueueDepth | None = None) -> dict[str, Any]:
    """A run's progress with its state, elapsed time and rate."""
    end = progress.finished_at or now
    elapsed = max((end - progress.started_at).total_seconds(), 0.0)
    return {
        "run_id": str(progress.run_id),
        "mode": progress.mode,
        "state": run_state(progress, queue, now),
        "enqueue_error": progress.enqueue_error,
        "generation": progress.generation,
        "without_generation": progress.without_its_generation,
        "switched_at": progress.switched_at.isoformat() if progress.switched_at else None,
        "switch_error": progress.switch_error,
        "documents_removed": progress.documents_removed,
        "announced": progress.announced_at is not None,
        "failed_drugs": progress.open_failures,
        "started_at": progress.started_at.isoformat(),
        "ranges_done": progress.ranges_done,
        "ranges_total": progress.total_ranges,
        "drugs_done": progress.drugs_done,
        "drugs_total": progress.eligible_drugs,
        "drugs_skipped": progress.drugs_skipped,
        "elapsed_seconds": round(elapsed, 2),
        "drugs_per_second": round(progress.drugs_done / elapsed, 1) if elapsed > 0 else 0.0,
    }


def gather_counts(catalog: Catalog, store: RedisDocumentStore) -> Counts:
    indexed, failures = store.indexed_documents()
    return Counts(catalog.count_eligible(), store.count_documents(), indexed, failures)


def gather_status(
    ledger: PostgresLedger,
    catalog: Catalog,
    store: RedisDocumentStore,
    queue: SqsQueue | None,
    dead_letter: SqsQueue | None,
    run_id: UUID | None = None,
    generations: RedisGenerations | None = None,
) -> StatusReport:
    ledger.ensure_schema()
    chosen = run_id or ledger.latest_run_id()
    report = gather_progress(ledger, queue, dead_letter, chosen, datetime.now(UTC))
    run = report.run
    if run is not None and run["failed_drugs"]:
        failures = ledger.open_failures(UUID(run["run_id"]))[:MAX_LISTED_FAILURES]
        run = {**run, "failures": [asdict(failure) for failure in failures]}
    described = describe(generations.read()) if generations is not None else None
    return replace(report, run=run, counts=gather_counts(catalog, store), generations=described)


def gather_quota(client: redis.Redis, settings: Settings) -> dict[str, Any] | None:
    """How much of the embedding quota every consumer sharing this Redis used in the last minute, and
    how much is reserved ahead (requests waiting for their slot); None without a quota."""
    if settings.embedding_quota_rpm is None and settings.embedding_quota_tpm is None:
        return None
    key = quota_key(settings)
    now, counts = admissions_per_second(client, key, 60)
    return {
        "key": key,
        "requests_per_minute": settings.embedding_quota_rpm,
        "tokens_per_minute": settings.embedding_quota_tpm,
        "requests_last_60_seconds": sum(count for second, count in counts.items() if second <= now),
        "requests_reserved_ahead": sum(count for second, count in counts.items() if second > now),
    }


def gather_progress(
    ledger: PostgresLedger,
    queue: SqsQueue | None,
    dead_letter: SqsQueue | None,
    run_id: UUID | None,
    now: datetime,
) -> StatusReport:
    """The run and the queue depths without the counts: cheap enough to read every few seconds."""
    progress = ledger.progress(run_id) if run_id else None
    depth = queue.depth() if queue else None
    return StatusReport(
        run=describe_run(progress, now, depth) if progress else None,
        queue=depth,
        dead_letter=dead_letter.depth() if dead_letter else None,
        counts=None,
    )


def progress_bar(done: int, total: int, width: int = 30) -> str:
    """[#########.....]  45.0%"""
    fraction = 1.0 if total == 0 else min(done / total, 1.0)
    filled = round(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%"


def render_run_line(run: dict[str, Any]) -> str:
    return (
        f"{progress_bar(run['drugs_done'], run['drugs_total'])}  "
        f"{run['drugs_done']:,}/{run['drugs_total']:,} drugs  "
        f"{run['ranges_done']:,}/{run['ranges_total']:,} ranges  "
        f"{run['drugs_per_second']:,.0f} drugs/s"
    )


def render_status(report: StatusReport) -> str:
    lines = []
    if report.run is None:
        lines.append("no sync run recorded yet")
    else:
        run = report.run
        lines.append(f"run {run['run_id']}  {run['state']}  {run['mode']}  started {run['started_at']}")
        lines.append(render_run_line(run))
        if run["drugs_skipped"]:
            lines.append(f"{run['drugs_skipped']:,} of them already current: neither embedded nor written")
        lines.append(f"elapsed {run['elapsed_seconds']:.1f}s")
        for failure in run.get("failures", []):
            lines.append(f"  failed: drug {failure['drug_id']} {failure['error_class']}: {failure['error']}")
        if run["failed_drugs"]:
            lines.append(f"{run['failed_drugs']} drugs failed and wait in the DLQ: see `drugsync dlq`")
        if run["documents_removed"]:
            lines.append(f"{run['documents_removed']:,} documents of drugs no longer eligible removed")
        if todo := advice(run):
            lines.append(f"{run['state'].upper()}: {todo}")
    if report.queue is not None:
        lines.append(
            f"queue: {report.queue.visible} visible, {report.queue.in_flight} in flight,"
            f" {report.queue.delayed} delayed"
            + (f"; dead-letter: {report.dead_letter.visible}" if report.dead_letter else "")
        )
    if report.generations is not None:
        lines.append(render_generations(report.generations))
    if report.counts is not None:
        lines.append(render_counts(report.counts))
    if report.quota is not None:
        lines.append(render_quota(report.quota))
    return "\n".join(lines)


def render_quota(quota: dict[str, Any]) -> str:
    limit, used = quota["requests_per_minute"], quota["requests_last_60_seconds"]
    of = f" of {limit:,}/min" if limit else ""
    return (
        f"embedding quota {quota['key']}: {used:,} requests in the last 60 s{of},"
        f" {quota['requests_reserved_ahead']:,} reserved ahead"
    )


def render_generations(generations: dict[str, Any]) -> str:
    """Which generation readers use, and which are being built or removed."""
    current = generations["current"]
    parts = [
        "generation: none yet"
        if current is None
        else f"generation {current['number']} current ({current['embedder']}, {current['index']})"
    ]
    parts += [f"{g['number']} building ({g['embedder']})" for g in generations["building"]]
    parts += [f"{g['number']} retiring" for g in generations["retiring"]]
    if not generations["aliases"]:
        parts.append("no FT.ALIASUPDATE on this server: readers follow the registry's current")
    return "; ".join(parts)


def render_counts(counts: Counts) -> str:
    return (
        f"postgres eligible {counts.postgres_eligible:,} | redis documents {counts.redis_documents:,}"
        f" | index documents {counts.index_documents:,} (failures {counts.index_failures})"
        f" -> {'consistent' if counts.consistent else 'NOT consistent'}"
    )


def gather_runs(ledger: PostgresLedger, queue: SqsQueue | None, limit: int) -> list[dict[str, Any]]:
    """The most recent runs, newest first, each described as `status` describes one."""
    ledger.ensure_schema()
    depth = queue.depth() if queue else None
    now = datetime.now(UTC)
    found = (ledger.progress(run_id) for run_id in ledger.recent_run_ids(limit))
    return [describe_run(progress, now, depth) for progress in found if progress is not None]


def render_runs(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no sync run recorded yet"
    lines = [
        f"{'run':<36}  {'mode':<11}  {'state':<22}  {'started':<25}  {'ranges':>13}  {'drugs':>15}"
        f"  {'skipped':>7}  failed"
    ]
    for run in runs:
        lines.append(
            f"{run['run_id']:<36}  {run['mode']:<11}  {run['state']:<22}  {run['started_at'][:25]:<25}"
            f"  {run['ranges_done']:>6}/{run['ranges_total']:<6}"
            f"  {run['drugs_done']:>7}/{run['drugs_total']:<7}"
            f"  {run['drugs_skipped']:>7}  {run['failed_drugs']}"
        )
        if todo := advice(run):
            lines.append(f"    {todo}")
    return "\n".join(lines)
