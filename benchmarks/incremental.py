"""What finding the changes of a daily incremental run costs, by change capture and by the watermark.

    .venv/bin/python -m benchmarks.incremental [--drugs 100000] [--changes 500]

Starts its own embedded stack in a temporary folder, seeds the catalog, stores one small document
per eligible drug (what the sweep walks), then times each way of finding what changed. Medians of 3.
"""

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from benchmarks.stack import embedded_stack
from console.seed import seed_drugs
from console.services import Services

SWEEP_PAGE = 1000  # SyncEnv.sweep_page_size


def median_seconds(action: Callable[[], Any], times: int = 3) -> float:
    runs = []
    for _ in range(times):
        began = time.perf_counter()
        action()
        runs.append(time.perf_counter() - began)
    return statistics.median(runs)


def store_documents(services: Services) -> int:
    """One small JSON document per eligible drug under the prefix: the sweep reads only keys."""
    client = services.store._client  # a benchmark fills the store directly
    count = 0
    for page in services.catalog.iter_eligible_rows(5000):
        pipe = client.pipeline(transaction=False)
        for row in page:
            pipe.execute_command("JSON.SET", services.store.key(row[0]), "$", f'{{"id":{row[0]}}}')  # type: ignore[no-untyped-call]
        pipe.execute()
        count += len(page)
    return count


def sweep_walk(services: Services) -> None:
    """What a sweep costs when nothing is to be removed: SCAN pages and one id lookup per page."""
    cursor = 0
    while True:
        cursor, ids = services.store.scan_ids(cursor, SWEEP_PAGE)
        services.catalog.qualifying_ids(ids)
        if cursor == 0:
            return


def touch(services: Services, changes: int) -> None:
    """Edit `changes` rows spread over the table, as a day of catalog edits would."""
    table = sql.Identifier(*services.settings.table_parts)
    services.conn.execute(
        sql.SQL(
            "UPDATE {t} SET description = description || '.', updated_at = now()"
            " WHERE id IN (SELECT id FROM {t} ORDER BY random() LIMIT %s)"
        ).format(t=table),
        [changes],
    )


def bench(services: Services, drugs: int, changes: int) -> list[str]:
    table = sql.Identifier(*services.settings.table_parts)
    conn, capture = services.conn, services.capture
    since = datetime.now(UTC) - timedelta(minutes=1)
    documents = store_documents(services)
    lines = [f"{drugs:,} drugs, {documents:,} documents, {changes} changed rows"]

    sweep = median_seconds(lambda: sweep_walk(services))
    lines.append(f"sweep walk (SCAN {SWEEP_PAGE} + id lookup per page): {sweep:.2f} s")
    touch(services, changes)
    seq_scan = median_seconds(lambda: capture.changed_since(since))
    lines.append(f"watermark query, no index on updated_at: {seq_scan * 1000:.1f} ms")
    conn.execute(sql.SQL("CREATE INDEX ON {} (updated_at)").format(table))
    conn.execute(sql.SQL("ANALYZE {}").format(table))
    indexed = median_seconds(lambda: capture.changed_since(since))
    lines.append(f"watermark query, index on updated_at: {indexed * 1000:.1f} ms")

    plain = median_seconds(lambda: touch(services, 10_000), times=1)
    capture.install()
    triggered = median_seconds(lambda: touch(services, 10_000), times=1)
    lines.append(
        f"updating 10,000 rows: {plain * 1000:.0f} ms without triggers, {triggered * 1000:.0f} ms with"
    )
    conn.execute("DELETE FROM drugsync_changes WHERE source_table = %s", [capture.source_table])
    touch(services, changes)
    claim = median_seconds(lambda: capture.claim(uuid.uuid4()))
    lines.append(f"claim of {changes} changes (re-claimed each time): {claim * 1000:.1f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drugs", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=500)
    args = parser.parse_args()
    with embedded_stack() as (services, _, _):
        seed_drugs(services.conn, services.settings, args.drugs)
        print("\n".join(bench(services, args.drugs, args.changes)))


if __name__ == "__main__":
    main()
