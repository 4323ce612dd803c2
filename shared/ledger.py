"""The run ledger, kept in PostgreSQL beside the catalog: runs, their ranges, and which are done."""

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg

from shared.models import PlannedRange
from shared.ports import RunProgress
from shared.postgres import translate_errors

CREATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS drugsync_runs (
    run_id         uuid PRIMARY KEY,
    started_at     timestamptz NOT NULL DEFAULT now(),
    range_size     integer NOT NULL,
    max_drugs      bigint,
    eligible_drugs bigint NOT NULL,
    total_ranges   integer NOT NULL
);
CREATE TABLE IF NOT EXISTS drugsync_ranges (
    run_id         uuid NOT NULL REFERENCES drugsync_runs ON DELETE CASCADE,
    first_id       bigint NOT NULL,
    last_id        bigint NOT NULL,
    expected_count integer NOT NULL,
    drugs_written  integer,
    done_at        timestamptz,
    PRIMARY KEY (run_id, first_id)
);
"""

INSERT_RUN = """
INSERT INTO drugsync_runs (run_id, range_size, max_drugs, eligible_drugs, total_ranges)
VALUES (%(run_id)s, %(range_size)s, %(max_drugs)s, %(eligible_drugs)s, %(total_ranges)s)
"""

COPY_RANGES = "COPY drugsync_ranges (run_id, first_id, last_id, expected_count) FROM STDIN"

# Only the first completion of a range counts: a redelivered message finds done_at already set.
# Concurrent duplicates serialise on the row lock and the second sees done_at set.
MARK_RANGE_DONE = """
UPDATE drugsync_ranges SET drugs_written = %(drugs_written)s, done_at = now()
WHERE run_id = %(run_id)s AND first_id = %(first_id)s AND done_at IS NULL
RETURNING 1
"""

RUN_PROGRESS = """
SELECT r.run_id, r.started_at, r.range_size, r.eligible_drugs, r.total_ranges,
       count(g.done_at), coalesce(sum(g.drugs_written), 0), max(g.done_at)
FROM drugsync_runs r
LEFT JOIN drugsync_ranges g ON g.run_id = r.run_id AND g.done_at IS NOT NULL
WHERE r.run_id = %(run_id)s
GROUP BY r.run_id
"""

LATEST_RUN = "SELECT run_id FROM drugsync_runs ORDER BY started_at DESC LIMIT 1"


class PostgresLedger:
    """Ledger tables drugsync_runs and drugsync_ranges, created on first use by the producer."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def ensure_schema(self) -> None:
        with translate_errors("creating the ledger tables"):
            self._conn.execute(CREATE_SCHEMA)

    def start_run(
        self, run_id: UUID, range_size: int, max_drugs: int | None, ranges: Sequence[PlannedRange]
    ) -> None:
        run = {
            "run_id": run_id,
            "range_size": range_size,
            "max_drugs": max_drugs,
            "eligible_drugs": sum(planned.drug_count for planned in ranges),
            "total_ranges": len(ranges),
        }
        with translate_errors("recording a run"), self._conn.transaction():
            self._conn.execute(INSERT_RUN, run)
            with self._conn.cursor().copy(COPY_RANGES) as copy:
                for planned in ranges:
                    copy.write_row((run_id, planned.first_id, planned.last_id, planned.drug_count))

    def mark_range_done(self, run_id: UUID, first_id: int, drugs_written: int) -> bool:
        params = {"run_id": run_id, "first_id": first_id, "drugs_written": drugs_written}
        with translate_errors("marking a range done"):
            return self._conn.execute(MARK_RANGE_DONE, params).fetchone() is not None

    def progress(self, run_id: UUID) -> RunProgress | None:
        with translate_errors("reading run progress"):
            row = self._conn.execute(RUN_PROGRESS, {"run_id": run_id}).fetchone()
        return RunProgress(*row) if row else None

    def latest_run_id(self) -> UUID | None:
        with translate_errors("finding the latest run"):
            row = self._conn.execute(LATEST_RUN).fetchone()
        return row[0] if row else None
