"""Start an incremental run: the ids changed since the last complete run, as changes messages."""

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from producer.send import send_run_messages
from shared.errors import ConfigError
from shared.generations import matches
from shared.models import ChangesMessage, PlannedRange, SweepMessage, SyncSummary, pack_changes
from shared.ports import Catalog, ChangeFeed, Generations, Ledger, WorkQueue

FULL_SYNC_FIRST = (
    "no complete full sync of {table} {since}: an incremental run syncs only what changed after one;"
    " run `drugsync sync` first"
)


def start_incremental(
    *,
    catalog: Catalog,
    ledger: Ledger,
    queue: WorkQueue,
    generations: Generations,
    changes: ChangeFeed,
    embedder_name: str,
    overlap_seconds: float,
    supersede: bool = False,
    claim_seconds: float = 3600.0,
) -> SyncSummary:
    """Claim (capture) or find (watermark) the changed ids, record the run, enqueue them.

    With capture the run needs no sweep: every deletion was recorded, but for a TRUNCATE of the
    table since the last complete run. With the watermark, the run's sweep finds deletions (and
    de-listings whose updated_at was not touched).
    """
    began = time.perf_counter()
    generation = current_generation(generations, embedder_name)
    ledger.ensure_schema()
    run_id = uuid.uuid4()
    source = change_source(catalog.table_name, ledger, changes, overlap_seconds)
    units: list[list[int]] = []

    def plan() -> list[PlannedRange]:
        units[:] = pack_changes(run_id, source.read(run_id))  # under the claim: a refused run takes none
        return [PlannedRange(unit[0], unit[-1], len(unit)) for unit in units]

    superseded = ledger.start_run(
        run_id, 1, None, [], mode="incremental", generation=generation, source_table=catalog.table_name,
        changes_source=source.name, swept=not source.sweep, supersede=supersede, claim_seconds=claim_seconds,
        plan=plan,
    )  # fmt: skip
    ids = [drug_id for unit in units for drug_id in unit]
    ranges = [PlannedRange(unit[0], unit[-1], len(unit)) for unit in units]
    bodies = [ChangesMessage(run_id=run_id, ids=unit, total=len(unit)).model_dump_json() for unit in units]
    planned = time.perf_counter()
    # Nothing changed: the run still ends, through the one message that takes it to its end.
    bodies = bodies or [SweepMessage(run_id=run_id).model_dump_json()]
    send_run_messages(run_id, bodies, swept_now=not ranges, ledger=ledger, queue=queue)
    return SyncSummary(
        run_id=run_id,
        eligible_drugs=len(ids),
        ranges=len(ranges),
        messages_sent=len(bodies),
        range_size=max((len(unit) for unit in units), default=0),
        max_drugs=None,
        plan_seconds=round(planned - began, 3),
        enqueue_seconds=round(time.perf_counter() - planned, 3),
        mode="incremental",
        generation=generation,
        changed_ids=len(ids),
        changes_source=source.name,
        superseded=superseded,
    )


def current_generation(generations: Generations, embedder_name: str) -> int:
    """The generation readers use, which an incremental run writes; refused when there is none, or
    when it was embedded otherwise than this producer would (a full run rebuilds it first)."""
    live = generations.read().live
    if live is None:
        raise ConfigError("no generation is current in Redis: run `drugsync sync` first (a full run)")
    if not matches(live, embedder_name, generations.layout):
        raise ConfigError(
            f"generation {live.number}, which readers use, was embedded by"
            f" {live.embedder or 'an unrecorded embedder'} (text template {live.template_version}) and"
            f" stored as {' '.join(live.layout_identity)}, not as this producer embeds ({embedder_name})"
            f" and stores ({generations.layout.describe()}): a full `drugsync sync` rebuilds it first;"
            " incremental runs follow"
        )
    return live.number


@dataclass(frozen=True)
class Source:
    """Where an incremental run's changes come from, and how to read them (once the run holds the claim)."""

    name: str  # 'capture' | 'watermark'
    sweep: bool  # the run must sweep: deletions were not all captured
    changes: ChangeFeed
    since: datetime | None  # the watermark's, less the overlap
    failing: frozenset[int]  # ids still failing in the base run, tried again

    def read(self, run_id: uuid.UUID) -> list[int]:
        """The sorted changed ids: claimed from capture, or updated since the watermark."""
        found = self.changes.claim(run_id) if self.since is None else self.changes.changed_since(self.since)
        return sorted(set(found) | self.failing)


def change_source(table: str, ledger: Ledger, changes: ChangeFeed, overlap_seconds: float) -> Source:
    """Where the run finds its changes; refused without a complete run to build on.

    Rows still failing in that run are tried again: a full run's failures are in no change table,
    and the watermark would not see them (a capture run's are kept in its change table anyway).
    """
    status = changes.status()
    if status.broken:
        raise ConfigError(status.broken)
    if status.installed:
        base = ledger.last_complete_run(table, after=status.installed_at)
        if base is None:
            installed = f"since change capture was installed ({status.installed_at:%Y-%m-%d %H:%M:%S %Z})"
            raise ConfigError(FULL_SYNC_FIRST.format(table=table, since=installed))
        truncated = status.truncated_at is not None and status.truncated_at >= base[1]
        return Source("capture", truncated, changes, None, failing_in(ledger, base[0]))
    base = ledger.last_complete_run(table)
    if base is None:
        raise ConfigError(FULL_SYNC_FIRST.format(table=table, since="in the ledger"))
    since = base[1] - timedelta(seconds=overlap_seconds)
    return Source("watermark", True, changes, since, failing_in(ledger, base[0]))


def failing_in(ledger: Ledger, run_id: uuid.UUID) -> frozenset[int]:
    return frozenset(failure.drug_id for failure in ledger.open_failures(run_id))
