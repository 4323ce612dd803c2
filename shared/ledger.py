"""The run ledger, kept in PostgreSQL beside the catalog: runs, their ranges, and which are done."""

from collections.abc import Sequence
from uuid import UUID

from shared.models import PlannedRange, RowFailure
from shared.ports import RunProgress
from shared.postgres import Database, translate_errors

CREATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS drugsync_runs (
    run_id         uuid PRIMARY KEY,
    started_at     timestamptz NOT NULL DEFAULT now(),
    range_size     integer NOT NULL,
    max_drugs      bigint,
    eligible_drugs bigint NOT NULL,
    total_ranges   integer NOT NULL
);
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS finished_at timestamptz;
CREATE TABLE IF NOT EXISTS drugsync_ranges (
    run_id         uuid NOT NULL REFERENCES drugsync_runs ON DELETE CASCADE,
    first_id       bigint NOT NULL,
    last_id        bigint NOT NULL,
    expected_count integer NOT NULL,
    drugs_written  integer,
    done_at        timestamptz,
    PRIMARY KEY (run_id, first_id)
);
CREATE TABLE IF NOT EXISTS drugsync_failures (
    run_id         uuid NOT NULL REFERENCES drugsync_runs ON DELETE CASCADE,
    drug_id        bigint NOT NULL,
    error_class    text NOT NULL,
    error          text NOT NULL,
    failed_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz,
    PRIMARY KEY (run_id, drug_id)
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
       count(g.done_at), coalesce(sum(g.drugs_written), 0), max(g.done_at),
       (SELECT count(*) FROM drugsync_failures f
        WHERE f.run_id = r.run_id AND f.resolved_at IS NULL)
FROM drugsync_runs r
LEFT JOIN drugsync_ranges g ON g.run_id = r.run_id AND g.done_at IS NOT NULL
WHERE r.run_id = %(run_id)s
GROUP BY r.run_id
"""

RANGE_STATE = """
SELECT last_id, done_at IS NOT NULL FROM drugsync_ranges
WHERE run_id = %(run_id)s AND first_id = %(first_id)s
"""

# A row that fails again after a redrive is open again, with its newest error.
RECORD_FAILURE = """
INSERT INTO drugsync_failures (run_id, drug_id, error_class, error)
VALUES (%(run_id)s, %(drug_id)s, %(error_class)s, %(error)s)
ON CONFLICT (run_id, drug_id) DO UPDATE
SET error_class = EXCLUDED.error_class, error = EXCLUDED.error, failed_at = now(), resolved_at = NULL
"""

RESOLVE_FAILURES = """
UPDATE drugsync_failures SET resolved_at = now()
WHERE run_id = %(run_id)s AND drug_id = ANY(%(ids)s) AND resolved_at IS NULL
"""

OPEN_FAILURES = """
SELECT drug_id, error_class, error FROM drugsync_failures
WHERE run_id = %(run_id)s AND resolved_at IS NULL ORDER BY drug_id
"""

OPEN_FAILURES_IN = """
SELECT count(*) FROM drugsync_failures
WHERE run_id = %(run_id)s AND resolved_at IS NULL AND drug_id BETWEEN %(first_id)s AND %(last_id)s
"""

# Exactly one caller finishes a run: the first to find every range done, under the row lock.
FINISH_RUN = """
UPDATE drugsync_runs r SET finished_at = now()
WHERE r.run_id = %(run_id)s AND r.finished_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM drugsync_ranges g WHERE g.run_id = r.run_id AND g.done_at IS NULL)
RETURNING 1
"""

LATEST_RUN = "SELECT run_id FROM drugsync_runs ORDER BY started_at DESC LIMIT 1"


class PostgresLedger:
    """Ledger tables drugsync_runs and drugsync_ranges, created on first use by the producer."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def ensure_schema(self) -> None:
        with translate_errors("creating the ledger tables"):
            self._db.connection().execute(CREATE_SCHEMA)

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
        conn = self._db.connection()
        with translate_errors("recording a run"), conn.transaction():
            conn.execute(INSERT_RUN, run)
            with conn.cursor().copy(COPY_RANGES) as copy:
                for planned in ranges:
                    copy.write_row((run_id, planned.first_id, planned.last_id, planned.drug_count))

    def mark_range_done(self, run_id: UUID, first_id: int, drugs_written: int) -> bool:
        params = {"run_id": run_id, "first_id": first_id, "drugs_written": drugs_written}
        with translate_errors("marking a range done"):
            return self._db.connection().execute(MARK_RANGE_DONE, params).fetchone() is not None

    def progress(self, run_id: UUID) -> RunProgress | None:
        with translate_errors("reading run progress"):
            row = self._db.connection().execute(RUN_PROGRESS, {"run_id": run_id}).fetchone()
        return RunProgress(*row) if row else None

    def finish_run(self, run_id: UUID) -> bool:
        """Mark the run finished if every range is done; True only for the one call that did."""
        with translate_errors("finishing a run"):
            return self._db.connection().execute(FINISH_RUN, {"run_id": run_id}).fetchone() is not None

    def range_state(self, run_id: UUID, first_id: int) -> tuple[int, bool] | None:
        """(last id, done) of a planned range, or None when the run has no such range."""
        with translate_errors("looking up a range"):
            row = (
                self._db.connection()
                .execute(RANGE_STATE, {"run_id": run_id, "first_id": first_id})
                .fetchone()
            )
        return (int(row[0]), bool(row[1])) if row else None

    def record_failures(self, run_id: UUID, failures: Sequence[RowFailure]) -> None:
        rows = [
            {"run_id": run_id, "drug_id": f.drug_id, "error_class": f.error_class, "error": f.error}
            for f in failures
        ]
        with translate_errors("recording failed rows"):
            self._db.connection().cursor().executemany(RECORD_FAILURE, rows)

    def resolve_failures(self, run_id: UUID, ids: Sequence[int]) -> None:
        with translate_errors("resolving failed rows"):
            self._db.connection().execute(RESOLVE_FAILURES, {"run_id": run_id, "ids": list(ids)})

    def open_failures(self, run_id: UUID) -> list[RowFailure]:
        with translate_errors("reading failed rows"):
            rows = self._db.connection().execute(OPEN_FAILURES, {"run_id": run_id}).fetchall()
        return [RowFailure(int(drug_id), error_class, error) for drug_id, error_class, error in rows]

    def open_failures_between(self, run_id: UUID, first_id: int, last_id: int) -> int:
        params = {"run_id": run_id, "first_id": first_id, "last_id": last_id}
        with translate_errors("counting failed rows"):
            row = self._db.connection().execute(OPEN_FAILURES_IN, params).fetchone()
        return int(row[0]) if row else 0

    def latest_run_id(self) -> UUID | None:
        with translate_errors("finding the latest run"):
            row = self._db.connection().execute(LATEST_RUN).fetchone()
        return row[0] if row else None
