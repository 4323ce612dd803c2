"""`drugsync verify [--repair]`: does Redis hold every eligible drug, current, and nothing else?

Redis here is the generation readers use now (the alias's target); a repair writes into it.
"""

import bisect
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from producer.plan import enqueue_run
from shared.documents import row_fingerprint
from shared.drift import Drift, compare_fingerprints
from shared.models import PlannedRange
from shared.ports import DocumentStore, Ledger, WorkQueue
from shared.postgres import PostgresCatalog
from shared.redis_store import RedisDocumentStore

SHOWN_IDS = 20


@dataclass
class VerifyReport:
    """What differs, with the index's own counts and how long the comparison took."""

    drift: Drift
    eligible_ids: list[int]
    postgres_eligible: int
    redis_documents: int
    index_documents: int
    index_failures: int
    seconds: float
    repair: dict[str, Any] | None = field(default=None)

    @property
    def lost(self) -> int:
        """Drugs Postgres has that Redis lacks or holds out of date."""
        return len(self.drift.missing) + len(self.drift.stale)

    @property
    def clean(self) -> bool:
        return (
            self.drift.clean and self.index_documents == self.postgres_eligible and self.index_failures == 0
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "missing": len(self.drift.missing),
            "extra": len(self.drift.extra),
            "stale": len(self.drift.stale),
            "missing_ids": self.drift.missing[:SHOWN_IDS],
            "extra_ids": self.drift.extra[:SHOWN_IDS],
            "stale_ids": self.drift.stale[:SHOWN_IDS],
            "postgres_eligible": self.postgres_eligible,
            "redis_documents": self.redis_documents,
            "index_documents": self.index_documents,
            "index_failures": self.index_failures,
            "seconds": round(self.seconds, 2),
            "repair": self.repair,
        }


def verify(catalog: PostgresCatalog, store: RedisDocumentStore, embedder_name: str) -> VerifyReport:
    """Stream both sides and compare ids and content fingerprints."""
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as redis_side:
        actual_future = redis_side.submit(store.fingerprints)  # both sides stream at once
        expected = {
            row[0]: row_fingerprint(row[0], row[1:-1], embedder_name)
            for rows in catalog.iter_eligible_rows(page_size=10_000)
            for row in rows
        }
        actual = actual_future.result()
    indexed, failures = store.indexed_documents()
    return VerifyReport(
        drift=compare_fingerprints(expected, actual),
        eligible_ids=sorted(expected),
        postgres_eligible=len(expected),
        redis_documents=len(actual),
        index_documents=indexed,
        index_failures=failures,
        seconds=time.perf_counter() - began,
    )


def covering_ranges(dirty: list[int], eligible: list[int], range_size: int) -> list[PlannedRange]:
    """The fewest ranges of at most range_size eligible ids that cover every dirty id.

    Greedy from the left is optimal: each range starts at the first uncovered dirty id and reaches
    as far as range_size eligible ids allow, ending on the last dirty id within that reach.
    """
    ranges: list[PlannedRange] = []
    index = 0
    while index < len(dirty):
        first = dirty[index]
        start = bisect.bisect_left(eligible, first)
        reach = eligible[min(start + range_size, len(eligible)) - 1]
        end_index = bisect.bisect_right(dirty, reach) - 1
        last = dirty[end_index]
        count = bisect.bisect_right(eligible, last) - start
        ranges.append(PlannedRange(first, last, count))
        index = end_index + 1
    return ranges


def repair(
    report: VerifyReport,
    store: DocumentStore,
    ledger: Ledger,
    queue: WorkQueue,
    embedding_dim: int,
    range_size: int,
    waiting: set[int],
    source_table: str | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    """Start a run of the fewest ranges that fix missing and stale drugs; its sweep removes extras.

    Nothing is deleted here: what verify saw as extra may qualify by now (inserted, or made
    eligible, and written by a running sync). The run's sweep checks each document against
    Postgres at delete time, and checks again after, so no qualifying drug is removed.
    Drugs `waiting` in the DLQ (rows messages there) wait for a fix and a redrive; syncing them
    again would only add another failure and another DLQ copy of each.
    """
    dirty = sorted((set(report.drift.missing) | set(report.drift.stale)) - waiting)
    ranges = covering_ranges(dirty, report.eligible_ids, range_size)
    # A repair run covers only some ranges: its own mode, so it is never the base of an incremental run.
    run_id, _ = enqueue_run(
        ranges, range_size, None, ledger=ledger, queue=queue, store=store, embedding_dim=embedding_dim,
        mode="repair", source_table=source_table, generation=generation,
    )  # fmt: skip
    return {
        "extras_to_remove": len(report.drift.extra),
        "run_id": str(run_id),
        "ranges": len(ranges),
        "drugs_to_resync": len(dirty),
        "failing_in_dlq": len(waiting & (set(report.drift.missing) | set(report.drift.stale))),
    }


def render_report(report: VerifyReport) -> str:
    drift = report.drift
    lines = [
        f"missing {len(drift.missing):,}  extra {len(drift.extra):,}  stale {len(drift.stale):,}"
        f"  (postgres eligible {report.postgres_eligible:,}, redis documents {report.redis_documents:,},"
        f" index documents {report.index_documents:,}, indexing failures {report.index_failures})"
        f"  in {report.seconds:.1f}s",
    ]
    for label, ids in (("missing", drift.missing), ("extra", drift.extra), ("stale", drift.stale)):
        if ids:
            more = f" (+{len(ids) - SHOWN_IDS} more)" if len(ids) > SHOWN_IDS else ""
            lines.append(f"  {label}: {', '.join(map(str, ids[:SHOWN_IDS]))}{more}")
    lines.append("no drift" if report.clean else "DRIFT: Redis does not match Postgres")
    if report.repair:
        repaired = report.repair
        lines.append(
            f"repair: run {repaired['run_id']} re-syncs {repaired['drugs_to_resync']} drug(s) in"
            f" {repaired['ranges']} range(s); its sweep removes what no longer qualifies"
            f" ({repaired['extras_to_remove']} extra now); follow it with `drugsync status`"
            + (
                f"; {repaired['failing_in_dlq']} drug(s) already failing wait in the DLQ (`drugsync dlq`)"
                if repaired["failing_in_dlq"]
                else ""
            )
        )
    return "\n".join(lines)
