"""Start a sync: plan ranges in the database, record the run, enqueue one message per range."""

import time
import uuid
from collections.abc import Sequence

from shared.models import PlannedRange, RangeMessage, SyncRequest, SyncSummary
from shared.ports import Catalog, DocumentStore, Ledger, WorkQueue


def start_sync(
    request: SyncRequest,
    *,
    catalog: Catalog,
    ledger: Ledger,
    queue: WorkQueue,
    store: DocumentStore,
    embedding_dim: int,
    default_range_size: int,
    max_range_size: int | None = None,
) -> SyncSummary:
    """Plan, record and enqueue one run; the index exists before any consumer can write."""
    range_size = min(request.range_size or default_range_size, max_range_size or 10**9)
    began = time.perf_counter()
    ranges = catalog.plan_ranges(range_size, request.max_drugs)
    planned = time.perf_counter()

    run_id = enqueue_run(
        ranges, range_size, request.max_drugs,
        ledger=ledger, queue=queue, store=store, embedding_dim=embedding_dim,
    )  # fmt: skip
    enqueued = time.perf_counter()

    return SyncSummary(
        run_id=run_id,
        eligible_drugs=sum(planned.drug_count for planned in ranges),
        ranges=len(ranges),
        messages_sent=len(ranges),
        range_size=range_size,
        max_drugs=request.max_drugs,
        plan_seconds=round(planned - began, 3),
        enqueue_seconds=round(enqueued - planned, 3),
    )


def enqueue_run(
    ranges: Sequence[PlannedRange],
    range_size: int,
    max_drugs: int | None,
    *,
    ledger: Ledger,
    queue: WorkQueue,
    store: DocumentStore,
    embedding_dim: int,
) -> uuid.UUID:
    """Record a new run of these ranges, then send one message per range (index first)."""
    store.ensure_index(embedding_dim)
    ledger.ensure_schema()
    run_id = uuid.uuid4()
    ledger.start_run(run_id, range_size, max_drugs, ranges)
    queue.send_messages([RangeMessage.for_range(run_id, planned).model_dump_json() for planned in ranges])
    return run_id


def range_size_that_fits(timeout_seconds: float, margin_seconds: float, seconds_per_drug: float) -> int:
    """The largest range a consumer finishes in half its usable time, so a normal range never
    needs a continuation and a slow one has room to spare."""
    usable = max(timeout_seconds - margin_seconds, 1.0)
    return max(1, int(usable * 0.5 / seconds_per_drug))
