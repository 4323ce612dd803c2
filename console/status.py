"""`drugsync status`: a run's progress, queue depths and the three counts that must agree."""

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from shared.ledger import PostgresLedger
from shared.ports import Catalog, RunProgress
from shared.queue import QueueDepth, SqsQueue
from shared.redis_store import RedisDocumentStore

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
    counts: Counts

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "queue": asdict(self.queue) if self.queue else None,
            "dead_letter": asdict(self.dead_letter) if self.dead_letter else None,
            "counts": {**asdict(self.counts), "consistent": self.counts.consistent},
        }


def describe_run(progress: RunProgress, now: datetime) -> dict[str, Any]:
    """A run's progress with its state, elapsed time and rate."""
    finished = progress.complete
    end = progress.last_done_at if finished and progress.last_done_at else now
    elapsed = max((end - progress.started_at).total_seconds(), 0.0)
    return {
        "run_id": str(progress.run_id),
        "state": progress.state,
        "failed_drugs": progress.open_failures,
        "started_at": progress.started_at.isoformat(),
        "ranges_done": progress.ranges_done,
        "ranges_total": progress.total_ranges,
        "drugs_done": progress.drugs_done,
        "drugs_total": progress.eligible_drugs,
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
) -> StatusReport:
    ledger.ensure_schema()
    chosen = run_id or ledger.latest_run_id()
    progress = ledger.progress(chosen) if chosen else None
    run = describe_run(progress, datetime.now(UTC)) if progress else None
    if progress is not None and progress.open_failures:
        failures = ledger.open_failures(progress.run_id)[:MAX_LISTED_FAILURES]
        run = {**(run or {}), "failures": [asdict(failure) for failure in failures]}
    return StatusReport(
        run=run,
        queue=queue.depth() if queue else None,
        dead_letter=dead_letter.depth() if dead_letter else None,
        counts=gather_counts(catalog, store),
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
        lines.append(f"run {run['run_id']}  {run['state']}  started {run['started_at']}")
        lines.append(render_run_line(run))
        lines.append(f"elapsed {run['elapsed_seconds']:.1f}s")
        for failure in run.get("failures", []):
            lines.append(f"  failed: drug {failure['drug_id']} {failure['error_class']}: {failure['error']}")
        if run["failed_drugs"]:
            lines.append(f"{run['failed_drugs']} drugs failed and wait in the DLQ: see `drugsync dlq`")
    if report.queue is not None:
        lines.append(
            f"queue: {report.queue.visible} visible, {report.queue.in_flight} in flight"
            + (f"; dead-letter: {report.dead_letter.visible}" if report.dead_letter else "")
        )
    counts = report.counts
    lines.append(
        f"postgres eligible {counts.postgres_eligible:,} | redis documents {counts.redis_documents:,}"
        f" | index documents {counts.index_documents:,} (failures {counts.index_failures})"
        f" -> {'consistent' if counts.consistent else 'NOT consistent'}"
    )
    return "\n".join(lines)
