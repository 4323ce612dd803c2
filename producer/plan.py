"""Start a sync: plan ranges in the database, record the run, enqueue one message per range."""

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace

from shared.describe import describe_error
from shared.errors import ConfigError, DrugSyncError, EnqueueFailed
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
from shared.ports import Catalog, DocumentStore, Generations, Ledger, WorkQueue


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
) -> SyncSummary:
    """Plan, record and enqueue one run into the generation it writes; its index exists first."""
    if request.mode == "incremental":
        raise ConfigError("incremental runs are not available in this build: run a full `drugsync sync`")
    range_size = min(request.range_size or default_range_size, max_range_size or 10**9)
    began = time.perf_counter()
    ranges = catalog.plan_ranges(range_size, request.max_drugs)
    if request.max_drugs is None:  # a capped proof-of-concept run syncs only what it planned
        ranges = cover_id_space(ranges)
    planned = time.perf_counter()

    run_id = uuid.uuid4()
    registry = generations.read()
    choice = choose_generation(request.mode, registry, embedder_name)
    refuse_partial_switch(request, registry, choice)
    number = open_generation(choice, run_id, generations, embedder_name, embedding_dim)
    retiring = [*choice.retire, *(g.number for g in registry.retiring())]
    for old in retiring:
        generations.mark_retiring(old)
    enqueue_run(
        ranges, range_size, request.max_drugs,
        ledger=ledger, queue=queue, store=generations.store(number), embedding_dim=embedding_dim,
        run_id=run_id, mode=choice.mode, generation=number,
        extra=[RetireMessage(run_id=run_id, generation=old).model_dump_json() for old in retiring],
    )  # fmt: skip
    enqueued = time.perf_counter()

    return SyncSummary(
        run_id=run_id,
        eligible_drugs=sum(planned.drug_count for planned in ranges),
        ranges=len(ranges),
        messages_sent=max(len(ranges), 1),
        range_size=range_size,
        max_drugs=request.max_drugs,
        plan_seconds=round(planned - began, 3),
        enqueue_seconds=round(enqueued - planned, 3),
        mode=choice.mode,
        generation=number,
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
    else the one chosen, now switched by this run if it is not yet current."""
    if choice.number is None:
        return generations.begin(embedder_name, dimension, str(run_id)).number
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
    run_id: uuid.UUID | None = None,
    mode: str = "full",
    generation: int | None = None,
    extra: Sequence[str] = (),
) -> uuid.UUID:
    """Record a new run of these ranges into `store` (its generation's), then send its messages.

    Whatever can be checked is checked before the run is recorded (the index, the ledger, every
    message), so a refused run leaves nothing behind; a run whose enqueue fails part-way is recorded
    as such, with the reason, and `resume_run` sends again what is not done. `extra` messages
    (retiring older generations) go out with the run's own.
    """
    store.ensure_index(embedding_dim)
    ledger.ensure_schema()
    run_id = run_id or uuid.uuid4()
    bodies = [*run_messages(run_id, ranges), *extra]
    ledger.start_run(run_id, range_size, max_drugs, ranges, mode=mode, generation=generation)
    send_run_messages(run_id, bodies, swept_now=not ranges, ledger=ledger, queue=queue)
    return run_id


def run_messages(run_id: uuid.UUID, ranges: Sequence[PlannedRange]) -> list[str]:
    """One message per range; a run with no range left to sync goes straight to its sweep."""
    if not ranges:
        return [SweepMessage(run_id=run_id).model_dump_json()]
    return [RangeMessage.for_range(run_id, planned).model_dump_json() for planned in ranges]


def send_run_messages(
    run_id: uuid.UUID, bodies: Sequence[str], *, swept_now: bool, ledger: Ledger, queue: WorkQueue
) -> None:
    """Send a recorded run's messages; on failure record why, and say how to resume."""
    try:
        queue.send_messages(bodies)
    except DrugSyncError as error:
        reason = describe_error(error)
        ledger.record_enqueue_error(run_id, reason)
        raise EnqueueFailed(
            f"run {run_id} is recorded, but its messages could not all be sent ({reason});"
            f" nothing is lost: `drugsync resume {run_id}` sends again every range not done"
        ) from error
    if swept_now:
        ledger.mark_sweep_requested(run_id)
    ledger.mark_enqueued(run_id)


def resume_run(run_id: uuid.UUID, *, ledger: Ledger, queue: WorkQueue) -> int:
    """Send again whatever of a run is not done: its open ranges, or else its sweep and end.

    Consumers are idempotent (a done range is skipped, writes are keyed), so messages still in
    flight from before are harmless duplicates. Returns how many messages were sent.
    """
    ledger.ensure_schema()
    progress = ledger.progress(run_id)
    if progress is None:
        raise ConfigError(f"no run {run_id} in the ledger: `drugsync runs` lists the recent ones")
    if progress.complete and progress.announced_at is not None:
        return 0
    undone = ledger.undone_ranges(run_id)
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
