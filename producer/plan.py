"""Start a sync: plan ranges in the database, record the run, enqueue one message per range."""

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace

from producer.incremental import start_incremental
from producer.send import send_run_messages
from shared.describe import describe_error
from shared.errors import ConfigError, DrugSyncError
from shared.generations import Choice, Registry, choose_generation
from shared.models import (
    BIGINT_MAX,
    BIGINT_MIN,
    PlannedRange,
    RangeMessage,
    RetireMessage,
    SweepMessage,
    SyncRequest,
    SyncSummary,
)
from shared.ports import Catalog, ChangeFeed, DocumentStore, Generations, Ledger, WorkQueue


def start_sync(
    request: SyncRequest,
    *,
    catalog: Catalog,
    ledger: Ledger,
    queue: WorkQueue,
    generations: Generations,
    embedder_name: str,
    embedding_dim: int,
    default_range_size: int,
    max_range_size: int | None = None,
    claim_seconds: float = 3600.0,
    changes: ChangeFeed | None = None,
    overlap_seconds: float = 3600.0,
) -> SyncSummary:
    """Start one run of the mode asked for, into the generation it writes; its index exists first."""
    if request.mode == "incremental":
        if changes is None:
            raise ConfigError("an incremental run needs the change feed (shared/capture.py)")
        return start_incremental(
            catalog=catalog, ledger=ledger, queue=queue, generations=generations, changes=changes,
            embedder_name=embedder_name, overlap_seconds=overlap_seconds,
            supersede=request.supersede, claim_seconds=claim_seconds,
        )  # fmt: skip
    return start_full(
        request, catalog=catalog, ledger=ledger, queue=queue, generations=generations,
        embedder_name=embedder_name, embedding_dim=embedding_dim, default_range_size=default_range_size,
        max_range_size=max_range_size, claim_seconds=claim_seconds,
    )  # fmt: skip


def start_full(
    request: SyncRequest,
    *,
    catalog: Catalog,
    ledger: Ledger,
    queue: WorkQueue,
    generations: Generations,
    embedder_name: str,
    embedding_dim: int,
    default_range_size: int,
    max_range_size: int | None = None,
    claim_seconds: float = 3600.0,
) -> SyncSummary:
    """Plan, record and enqueue a full run (or rebuild) into the generation it writes.

    The one-writer claim is taken (and the run recorded) before any generation is begun or marked
    retiring: a refused run leaves nothing behind, in the ledger or in Redis.
    """
    range_size = min(request.range_size or default_range_size, max_range_size or 10**9)
    began = time.perf_counter()
    ranges = catalog.plan_ranges(range_size, request.max_drugs)
    if request.max_drugs is None:  # a capped proof-of-concept run syncs only what it planned
        ranges = cover_id_space(ranges)
    planned = time.perf_counter()

    run_id = uuid.uuid4()
    registry = generations.read()
    choice = choose_generation(request.mode, registry, embedder_name, generations.layout)
    refuse_partial_switch(request, registry, choice)
    ledger.ensure_schema()
    superseded = ledger.start_run(
        run_id, range_size, request.max_drugs, ranges,
        mode=choice.mode, generation=choice.number, source_table=catalog.table_name,
        supersede=request.supersede, claim_seconds=claim_seconds,
    )  # fmt: skip
    try:
        number = open_generation(choice, run_id, generations, embedder_name, embedding_dim)
        if choice.number is None:
            ledger.set_generation(run_id, number)
        retiring = [*choice.retire, *(g.number for g in registry.retiring())]
        for old in retiring:
            generations.mark_retiring(old)
    except DrugSyncError as error:
        ledger.record_enqueue_error(run_id, f"its generation could not be opened: {describe_error(error)}")
        raise
    retire = [RetireMessage(run_id=run_id, generation=old).model_dump_json() for old in retiring]
    send_run_messages(run_id, [*run_messages(run_id, ranges), *retire], swept_now=not ranges,
                      ledger=ledger, queue=queue)  # fmt: skip
    enqueued = time.perf_counter()

    return SyncSummary(
        run_id=run_id,
        eligible_drugs=sum(planned.drug_count for planned in ranges),
        ranges=len(ranges),
        messages_sent=max(len(ranges), 1) + len(retire),
        range_size=range_size,
        max_drugs=request.max_drugs,
        plan_seconds=round(planned - began, 3),
        enqueue_seconds=round(enqueued - planned, 3),
        mode=choice.mode,
        generation=number,
        superseded=superseded,
    )


def refuse_partial_switch(request: SyncRequest, registry: Registry, choice: Choice) -> None:
    """A capped run may build the first generation or write the current one, never replace it:
    readers would switch from the whole catalog to part of it."""
    live = registry.live
    if request.max_drugs is None or live is None or choice.number == live.number:
        return
    raise ConfigError(
        f"a run capped at {request.max_drugs} drugs cannot {choice.mode} generation {live.number}"
        " (readers would switch to part of the catalog): run it without --max-drugs"
    )


def open_generation(
    choice: Choice, run_id: uuid.UUID, generations: Generations, embedder_name: str, dimension: int
) -> int:
    """The number of the generation the run writes: begun now for a new one (its index created),
    else the one chosen, now switched by this run if it is not yet current. A continued generation's
    index is ensured too: begin() records a generation before it creates its index, so one whose
    creation failed has none, and its switch would wait for indexing forever."""
    if choice.number is None:
        return generations.begin(embedder_name, dimension, str(run_id)).number
    generations.store(choice.number).ensure_index(dimension)
    if choice.mode == "rebuild":
        generations.adopt(choice.number, str(run_id))
    return choice.number


def enqueue_run(
    ranges: Sequence[PlannedRange],
    range_size: int,
    max_drugs: int | None,
    *,
    ledger: Ledger,
    queue: WorkQueue,
    store: DocumentStore,
    embedding_dim: int,
    mode: str = "full",
    generation: int | None = None,
    source_table: str | None = None,
    supersede: bool = False,
    claim_seconds: float = 3600.0,
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Record a new run of these ranges into `store` (its generation's), then send its messages;
    returns it and the runs it superseded.

    Whatever can be checked is checked before the run is recorded (the index, the ledger, every
    message, the one-writer claim), so a refused run leaves nothing behind; a run whose enqueue
    fails part-way is recorded as such, with the reason, and `resume_run` sends again what is not done.
    """
    store.ensure_index(embedding_dim)
    ledger.ensure_schema()
    run_id = uuid.uuid4()
    bodies = run_messages(run_id, ranges)
    superseded = ledger.start_run(
        run_id, range_size, max_drugs, ranges, mode=mode, generation=generation,
        supersede=supersede, claim_seconds=claim_seconds, source_table=source_table,
    )  # fmt: skip
    send_run_messages(run_id, bodies, swept_now=not ranges, ledger=ledger, queue=queue)
    return run_id, superseded


def run_messages(run_id: uuid.UUID, ranges: Sequence[PlannedRange]) -> list[str]:
    """One message per range; a run with no range left to sync goes straight to its sweep."""
    if not ranges:
        return [SweepMessage(run_id=run_id).model_dump_json()]
    return [RangeMessage.for_range(run_id, planned).model_dump_json() for planned in ranges]


def resume_run(run_id: uuid.UUID, *, ledger: Ledger, queue: WorkQueue) -> int:
    """Send again whatever of a run is not done: its open ranges, or else its sweep and end.

    Consumers are idempotent (a done range is skipped, writes are keyed), so messages still in
    flight from before are harmless duplicates. Returns how many messages were sent.
    """
    ledger.ensure_schema()
    progress = ledger.progress(run_id)
    if progress is None:
        raise ConfigError(f"no run {run_id} in the ledger: `drugsync runs` lists the recent ones")
    if progress.without_its_generation and progress.superseded_at is None:  # before the touch renews a claim
        raise ConfigError(
            f"run {run_id} ({progress.mode}) was recorded with no generation to write"
            f" ({progress.enqueue_error or 'none was opened'}) and cannot be resumed: its documents would"
            " go where no index reads them; start a new run (`drugsync sync --supersede`)"
        )
    touched = ledger.touch_run(run_id)  # a resumed run shows life again: its claim is renewed
    if touched is not None and touched.superseded and progress.finished_at is None:
        raise ConfigError(
            f"run {run_id} was superseded by run {touched.superseded_by} at {touched.superseded_at}"
            " and cannot be resumed: its messages are dropped; start a new run (`drugsync sync`)"
        )
    if progress.complete and progress.announced_at is not None:
        return 0
    undone = ledger.undone_ranges(run_id)
    if undone and progress.mode == "incremental":
        # Its messages name ids the ledger does not keep; a range message in their place would miss
        # deletions. Nothing is lost: what it claimed is released only when a run completes.
        raise ConfigError(
            f"run {run_id} is incremental with {len(undone)} unit(s) not done: start a new one with"
            " `drugsync sync --incremental --supersede`, which takes up its changes again"
        )
    bodies = run_messages(run_id, undone)
    send_run_messages(run_id, bodies, swept_now=not undone, ledger=ledger, queue=queue)
    return len(bodies)


def cover_id_space(ranges: Sequence[PlannedRange]) -> list[PlannedRange]:
    """Stretch the first range down to the smallest bigint and the last up to the largest.

    The planned ranges tile the ids between the first and last eligible row; stretched, they tile
    every id a row can have, so a row inserted anywhere during the run is in exactly one range.
    """
    if not ranges:
        return []
    stretched = list(ranges)
    stretched[0] = replace(stretched[0], first_id=BIGINT_MIN)
    stretched[-1] = replace(stretched[-1], last_id=BIGINT_MAX)
    return stretched


def range_size_that_fits(timeout_seconds: float, margin_seconds: float, seconds_per_drug: float) -> int:
    """The largest range a consumer finishes in half its usable time, so a normal range never
    needs a continuation and a slow one has room to spare."""
    usable = max(timeout_seconds - margin_seconds, 1.0)
    return max(1, int(usable * 0.5 / seconds_per_drug))
