"""What a daily run costs at catalog size: a full sync, a day's changes, then the incremental run.

    .venv/bin/python -m benchmarks.daily [--drugs 494000] [--changes 500] [--max-concurrency 4]

Starts its own embedded stack in a temporary folder, seeds the catalog and installs change capture,
then, each end to end (producer -> SQS -> local event source -> consumers -> Redis) and timed from
the producer's call to the queue drained:
  1. a full sync;
  2. a second full sync over the unchanged catalog (unless --no-second-full);
  3. a day's changes (70% edits of eligible rows, 10% inserts, 10% deletions, 10% de-listings),
     then the incremental run;
and `verify` after the last. For each run: wall time, texts sent to the embedding API (the
consumers' TextsEmbedded metric: with Titan V2, one request per text), drugs written, skipped and
removed (from the ledger: an incremental run's drugs done are the changed ids it handled, removals
included). Each text embedded is one document written.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from benchmarks.stack import embedded_stack
from console.event_source import EventSourceConfig, LocalEventSource
from console.seed import seed_drugs
from console.services import Services
from console.verify import verify
from shared.models import SyncRequest


@dataclass(frozen=True)
class RunCost:
    """What one run took."""

    label: str
    seconds: float
    texts_embedded: int
    drugs_done: int
    drugs_skipped: int
    documents_removed: int

    def line(self) -> str:
        return (
            f"{self.label:<28} {self.seconds:>8.1f} s  {self.texts_embedded:>9,} texts embedded"
            f"  {self.drugs_done:>9,} done  {self.drugs_skipped:>9,} of them skipped"
            f"  {self.documents_removed:>7,} removed"
        )


def texts_embedded(log: Path) -> int:
    """The TextsEmbedded metric summed over the consumers' EMF lines (a value, or a list of them)."""
    total = 0
    for line in log.read_text().splitlines() if log.exists() else []:
        if '"TextsEmbedded"' not in line:
            continue
        value = json.loads(line)["TextsEmbedded"]
        total += int(sum(value) if isinstance(value, list) else value)
    return total


def timed_run(
    services: Services, label: str, request: SyncRequest, max_concurrency: int, log: Path
) -> RunCost:
    """Start a run and consume until the queue is drained; its cost from the ledger and the logs."""
    log.unlink(missing_ok=True)
    began = time.perf_counter()
    summary = services.producer.start(request)
    config = EventSourceConfig(
        queue_url=services.queue.queue_url,
        batch_size=1,
        max_concurrency=max_concurrency,
        until_empty=True,
        wait_seconds=0,
        log_path=str(log),
    )
    LocalEventSource(services.sqs_client(), config).run()
    seconds = time.perf_counter() - began
    progress = services.ledger.progress(summary.run_id)
    if progress is None or progress.state != "complete":
        raise SystemExit(f"{label}: the run did not complete: {progress}")
    return RunCost(
        label, seconds, texts_embedded(log), progress.drugs_done, progress.drugs_skipped,
        progress.documents_removed,
    )  # fmt: skip


def make_changes(services: Services, changes: int) -> dict[str, int]:
    """A day's changes over distinct eligible rows: edits, inserts (copies under new ids), deletions and
    de-listings; returns how many of each."""
    names = services.settings
    table, key, eligible = (sql.Identifier(*names.table_parts), sql.Identifier(names.id_column),
                            sql.Identifier(names.eligible_column))  # fmt: skip
    edits, each = changes * 7 // 10, changes // 10
    conn = services.conn
    template = sql.SQL("SELECT {k} FROM {t} WHERE {e} ORDER BY random() LIMIT %s")
    pick = template.format(k=key, t=table, e=eligible)
    picked = [row[0] for row in conn.execute(pick, [edits + 3 * each])]
    edited, deleted, delisted, copied = (
        picked[:edits],
        picked[edits : edits + each],
        picked[edits + each : edits + 2 * each],
        picked[-each:],
    )
    conn.execute(
        sql.SQL("UPDATE {t} SET description = coalesce(description, '') || ' (revised)', updated_at = now()"
                " WHERE {k} = ANY(%s)").format(t=table, k=key), [edited])  # fmt: skip
    conn.execute(sql.SQL("DELETE FROM {t} WHERE {k} = ANY(%s)").format(t=table, k=key), [deleted])
    conn.execute(
        sql.SQL("UPDATE {t} SET {e} = false, updated_at = now() WHERE {k} = ANY(%s)").format(
            t=table, e=eligible, k=key), [delisted])  # fmt: skip
    columns = sql.SQL(", ").join(
        sql.Identifier(name) for name in ("ndc", "name", "generic_name", "brand_name", "strength",
                                          "dosage_form", "route", "manufacturer", "description")
    )  # fmt: skip
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} ({k}, {c}, {e}, updated_at)"
            " SELECT (SELECT max({k}) FROM {t}) + row_number() OVER (ORDER BY {k}), {c}, true, now()"
            " FROM {t} WHERE {k} = ANY(%s)"
        ).format(t=table, k=key, c=columns, e=eligible),
        [copied],
    )
    return {
        "edited": len(edited),
        "inserted": len(copied),
        "deleted": len(deleted),
        "delisted": len(delisted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drugs", type=int, default=494_000)
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--no-second-full", action="store_true", help="skip the unchanged full run")
    args = parser.parse_args()
    with embedded_stack() as (services, _, folder):
        eligible = seed_drugs(services.conn, services.settings, args.drugs)
        services.capture.install()
        print(f"{args.drugs:,} drugs seeded ({eligible:,} eligible), change capture installed;"
              f" consumers at most {args.max_concurrency} at once, hashing embedder")  # fmt: skip
        log = folder / "consumer.log"
        costs = [timed_run(services, "full sync", SyncRequest(), args.max_concurrency, log)]
        print(costs[-1].line(), flush=True)
        if not args.no_second_full:
            costs.append(
                timed_run(services, "full sync, unchanged", SyncRequest(), args.max_concurrency, log)
            )
            print(costs[-1].line(), flush=True)
        made = make_changes(services, args.changes)
        print("changes: " + ", ".join(f"{count} {kind}" for kind, count in made.items()))
        incremental = SyncRequest(mode="incremental")
        costs.append(timed_run(services, "incremental (capture)", incremental, args.max_concurrency, log))
        print(costs[-1].line(), flush=True)
        report = verify(services.catalog, services.current_store, services.current_embedder.name)
        drift = report.drift
        print(f"verify: missing {len(drift.missing)}, extra {len(drift.extra)}, stale {len(drift.stale)}"
              f" ({report.seconds:.1f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
