"""The run ledger, kept in PostgreSQL beside the catalog: runs, their ranges, and which are done."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from shared.capture import RELEASE_CHANGES
from shared.errors import RunActive
from shared.models import PlannedRange, RowFailure
from shared.ports import RunProgress, RunTouch
from shared.postgres import Database, translate_errors

SCHEMA_VERSION = 4

# Read on every call; the DDL below runs only when the version is behind, so `status` and the
# producer never take the ACCESS EXCLUSIVE lock that ALTER TABLE needs once the schema is current.
SCHEMA_EXISTS = "SELECT to_regclass('drugsync_schema') IS NOT NULL"
READ_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM drugsync_schema"

# One migrator at a time, whichever process gets there first (the lock ends with the transaction).
LOCK_MIGRATION = "SELECT pg_advisory_xact_lock(hashtext('drugsync_schema'))"

CREATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS drugsync_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS drugsync_runs (
    run_id         uuid PRIMARY KEY,
    started_at     timestamptz NOT NULL DEFAULT now(),
    range_size     integer NOT NULL,
    max_drugs      bigint,
    eligible_drugs bigint NOT NULL,
    total_ranges   integer NOT NULL
);
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS finished_at timestamptz;
-- v2: the run's stages after its ranges (sweep, announcement) and the fate of its enqueue.
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS enqueued_at timestamptz;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS enqueue_error text;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS sweep_requested_at timestamptz;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS swept_at timestamptz;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS documents_removed bigint NOT NULL DEFAULT 0;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS announce_claimed_at timestamptz;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS announced_at timestamptz;
-- Runs that v1 finished had been enqueued, and were announced as they finished: never again.
UPDATE drugsync_runs
SET enqueued_at = coalesce(enqueued_at, started_at), swept_at = coalesce(swept_at, finished_at),
    announced_at = coalesce(announced_at, finished_at)
WHERE finished_at IS NOT NULL AND announced_at IS NULL;
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
-- v3: what a run is (full, incremental, rebuild, repair) and the Redis generation it writes; the
-- switch of readers to that generation at its end (claimed by one consumer; refused with a reason);
-- one writer at a time (its heartbeat, who superseded it); skipped drugs per range; incremental
-- runs (their source table and where their changes came from).
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS mode text NOT NULL DEFAULT 'full';
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS generation integer;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS switched_at timestamptz;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS switch_error text;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS switch_claimed_at timestamptz;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS superseded_at timestamptz;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS superseded_by uuid;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS touched_at timestamptz;
ALTER TABLE drugsync_ranges ADD COLUMN IF NOT EXISTS drugs_skipped integer;
CREATE INDEX IF NOT EXISTS drugsync_runs_active ON drugsync_runs (started_at)
    WHERE finished_at IS NULL AND superseded_at IS NULL;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS changes_source text;
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS source_table text;
-- The database time before the run read its changes: the next watermark run reads from there.
-- v4: when a watermark run read its changes (a ledger at v3 from an earlier build lacks it).
ALTER TABLE drugsync_runs ADD COLUMN IF NOT EXISTS watermark_at timestamptz;
"""

CLEAR_SCHEMA_VERSION = "DELETE FROM drugsync_schema"
RECORD_SCHEMA_VERSION = "INSERT INTO drugsync_schema (version) VALUES (%(version)s)"

# A run that needs no sweep (an incremental run from change capture) is recorded as swept.
# now() is the start of the recording transaction, taken before `plan` read the changes (an
# incremental run reads them in it): whatever commits after that read has a later updated_at.
INSERT_RUN = """
INSERT INTO drugsync_runs (run_id, range_size, max_drugs, eligible_drugs, total_ranges, mode, generation,
                           source_table, changes_source, swept_at, watermark_at)
VALUES (%(run_id)s, %(range_size)s, %(max_drugs)s, %(eligible_drugs)s, %(total_ranges)s, %(mode)s,
        %(generation)s, %(source_table)s, %(changes_source)s, CASE WHEN %(swept)s THEN now() END, now())
"""

# One writer at a time: whoever records a run holds this lock until its transaction commits, so
# the next one looks for active runs only after the previous one's insert is visible (READ COMMITTED
# reads what committed before each statement: https://www.postgresql.org/docs/16/transaction-iso.html).
LOCK_WRITER = "SELECT pg_advisory_xact_lock(hashtext('drugsync_writer'))"

# Active runs of the same source table (one writer per catalog: two catalogs in one database, each
# with its own Redis copy, do not wait for each other), newest first, with their last sign of life:
# the heartbeat of their messages, a range done, their enqueue, their sweep (greatest() ignores
# NULLs), and whether that is older than the claim. A rebuild whose switch was refused writes no
# more: its claim is over, and the next run (which continues its generation) supersedes it. So is a
# full run or rebuild whose generation could not be opened: it never sent a message, and never will.
ACTIVE_RUNS = """
SELECT run_id, mode, started_at, last_activity,
       last_activity < now() - make_interval(secs => %(claim)s) OR switch_refused OR never_opened AS expired
FROM (
    SELECT r.run_id, r.mode, r.started_at, r.switch_error IS NOT NULL AS switch_refused,
           (r.enqueue_error IS NOT NULL AND r.generation IS NULL AND r.mode IN ('full', 'rebuild')
            AND r.source_table IS NOT NULL) AS never_opened,
           greatest(r.started_at, r.touched_at, r.enqueued_at, r.sweep_requested_at, r.swept_at,
                    (SELECT max(g.done_at) FROM drugsync_ranges g WHERE g.run_id = r.run_id))
               AS last_activity
    FROM drugsync_runs r
    WHERE r.finished_at IS NULL AND r.superseded_at IS NULL
      AND r.source_table IS NOT DISTINCT FROM %(source_table)s
) active
ORDER BY started_at DESC
"""

SUPERSEDE_RUNS = """
UPDATE drugsync_runs SET superseded_at = now(), superseded_by = %(by)s
WHERE run_id = ANY(%(run_ids)s) AND finished_at IS NULL AND superseded_at IS NULL
"""

# Every message of a run calls this first: the heartbeat keeps the run's claim, the answer says
# whether the run was superseded (its message is then dropped) and how it writes.
TOUCH_RUN = """
UPDATE drugsync_runs SET touched_at = now() WHERE run_id = %(run_id)s
RETURNING mode, generation, superseded_at, superseded_by
"""

COPY_RANGES = "COPY drugsync_ranges (run_id, first_id, last_id, expected_count) FROM STDIN"

# Only the first completion of a range counts: a redelivered message finds done_at already set.
# Concurrent duplicates serialise on the row lock and the second sees done_at set.
MARK_RANGE_DONE = """
UPDATE drugsync_ranges
SET drugs_written = %(drugs_written)s, drugs_skipped = %(drugs_skipped)s, done_at = now()
WHERE run_id = %(run_id)s AND first_id = %(first_id)s AND done_at IS NULL
RETURNING 1
"""

RUN_PROGRESS = """
SELECT r.run_id, r.started_at, r.range_size, r.eligible_drugs, r.total_ranges,
       count(g.done_at), coalesce(sum(g.drugs_written), 0), max(g.done_at),
       (SELECT count(*) FROM drugsync_failures f
        WHERE f.run_id = r.run_id AND f.resolved_at IS NULL),
       r.enqueued_at, r.enqueue_error, r.sweep_requested_at, r.swept_at, r.documents_removed,
       r.finished_at, r.announced_at, r.mode, r.generation, r.superseded_at,
       coalesce(sum(g.drugs_skipped), 0), r.switched_at, r.switch_error, r.source_table
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

# Exactly one caller finishes a run: the first to find every range done and the sweep done,
# under the row lock; a concurrent caller waits for it and then finds finished_at set. A superseded
# run never finishes: its last messages may still be in flight, but another run owns the end.
FINISH_RUN = """
UPDATE drugsync_runs r SET finished_at = now()
WHERE r.run_id = %(run_id)s AND r.finished_at IS NULL AND r.swept_at IS NOT NULL
  AND r.superseded_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM drugsync_ranges g WHERE g.run_id = r.run_id AND g.done_at IS NULL)
RETURNING r.changes_source
"""

# The newest run that left Redis holding every eligible row of the table as of its start: complete,
# neither capped nor superseded, full or incremental, and (for change capture) started after `after`;
# with its watermark (runs recorded before the column have their start).
LAST_COMPLETE_RUN = """
SELECT run_id, coalesce(watermark_at, started_at) FROM drugsync_runs
WHERE source_table = %(source_table)s AND finished_at IS NOT NULL AND superseded_at IS NULL
  AND max_drugs IS NULL AND mode IN ('full', 'rebuild', 'incremental') AND started_at > %(after)s
ORDER BY started_at DESC LIMIT 1
"""

# A new generation's number is known only once it is begun, after the run (and its claim) is recorded.
SET_GENERATION = "UPDATE drugsync_runs SET generation = %(generation)s WHERE run_id = %(run_id)s"

MARK_ENQUEUED = "UPDATE drugsync_runs SET enqueued_at = now(), enqueue_error = NULL WHERE run_id = %(run_id)s"

RECORD_ENQUEUE_ERROR = "UPDATE drugsync_runs SET enqueue_error = %(error)s WHERE run_id = %(run_id)s"

MARK_SWEEP_REQUESTED = "UPDATE drugsync_runs SET sweep_requested_at = now() WHERE run_id = %(run_id)s"

# The sweep is requested by one caller: the first to find every range done, or one coming after a
# claim has lapsed (its holder died between the claim and the send). A lease of two consumer
# timeouts has lapsed by the time SQS redelivers the holder's message (visibility >= 6 timeouts).
CLAIM_SWEEP = """
UPDATE drugsync_runs r SET sweep_requested_at = now()
WHERE r.run_id = %(run_id)s AND r.swept_at IS NULL AND r.superseded_at IS NULL
  AND (r.sweep_requested_at IS NULL OR r.sweep_requested_at < now() - make_interval(secs => %(lease)s))
  AND NOT EXISTS (SELECT 1 FROM drugsync_ranges g WHERE g.run_id = r.run_id AND g.done_at IS NULL)
RETURNING 1
"""

RELEASE_SWEEP = "UPDATE drugsync_runs SET sweep_requested_at = NULL WHERE run_id = %(run_id)s"

# A sweep counts only once every range is done: only then can nothing it judged be rewritten by the run.
# A superseded run's sweep never counts: it could otherwise go on to switch readers to its generation.
MARK_SWEPT = """
UPDATE drugsync_runs r SET swept_at = now()
WHERE r.run_id = %(run_id)s AND r.swept_at IS NULL AND r.superseded_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM drugsync_ranges g WHERE g.run_id = r.run_id AND g.done_at IS NULL)
"""

ADD_REMOVED = """
UPDATE drugsync_runs SET documents_removed = documents_removed + %(removed)s WHERE run_id = %(run_id)s
"""

# The end is announced by one caller at a time: a claim that lapses after the lease, so an
# announcer that died before it could say so is replaced, and one that failed releases it at once.
CLAIM_ANNOUNCEMENT = """
UPDATE drugsync_runs SET announce_claimed_at = now()
WHERE run_id = %(run_id)s AND finished_at IS NOT NULL AND announced_at IS NULL
  AND (announce_claimed_at IS NULL OR announce_claimed_at < now() - make_interval(secs => %(lease)s))
RETURNING 1
"""

RELEASE_ANNOUNCEMENT = "UPDATE drugsync_runs SET announce_claimed_at = NULL WHERE run_id = %(run_id)s"

MARK_ANNOUNCED = "UPDATE drugsync_runs SET announced_at = now() WHERE run_id = %(run_id)s"

# One consumer switches readers to the run's generation, like the sweep's claim: it lapses after the
# lease if its holder died, and is released at once when the verification refused the switch.
# A superseded run never switches: the run that superseded it may have retired its generation.
CLAIM_SWITCH = """
UPDATE drugsync_runs SET switch_claimed_at = now()
WHERE run_id = %(run_id)s AND swept_at IS NOT NULL AND switched_at IS NULL AND superseded_at IS NULL
  AND (switch_claimed_at IS NULL OR switch_claimed_at < now() - make_interval(secs => %(lease)s))
RETURNING 1
"""

RELEASE_SWITCH = "UPDATE drugsync_runs SET switch_claimed_at = NULL WHERE run_id = %(run_id)s"

RECORD_SWITCH_ERROR = """
UPDATE drugsync_runs SET switch_error = %(error)s, switch_claimed_at = NULL WHERE run_id = %(run_id)s
"""

MARK_SWITCHED = "UPDATE drugsync_runs SET switched_at = now(), switch_error = NULL WHERE run_id = %(run_id)s"

UNDONE_RANGES = """
SELECT first_id, last_id, expected_count FROM drugsync_ranges
WHERE run_id = %(run_id)s AND done_at IS NULL ORDER BY first_id
"""

RUN_MAX_DRUGS = "SELECT max_drugs FROM drugsync_runs WHERE run_id = %(run_id)s"

# Drugs change capture saw change in the run's table since the run started: the give or take of the
# count check at the switch, when the catalog is edited while a rebuild runs. Without capture
# installed (no change table, looked up by search_path as capture does) nothing is known: 0.
CHANGE_TABLE_EXISTS = "SELECT to_regclass('drugsync_changes') IS NOT NULL"
CHANGES_DURING_RUN = """
SELECT count(DISTINCT c.drug_id) FROM drugsync_changes c
JOIN drugsync_runs r ON c.source_table = r.source_table
WHERE r.run_id = %(run_id)s AND c.changed_at >= r.started_at
"""

LATEST_RUN = "SELECT run_id FROM drugsync_runs ORDER BY started_at DESC LIMIT 1"

RECENT_RUNS = "SELECT run_id FROM drugsync_runs ORDER BY started_at DESC LIMIT %(limit)s"


class PostgresLedger:
    """Ledger tables drugsync_runs and drugsync_ranges, created on first use by the producer."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def ensure_schema(self) -> None:
        """Create or migrate the ledger tables, only when their recorded version is behind."""
        conn = self._db.connection()
        with translate_errors("checking the ledger tables"):
            if self._schema_version(conn) >= SCHEMA_VERSION:
                return
        with translate_errors("creating the ledger tables"), conn.transaction():
            conn.execute(LOCK_MIGRATION)
            if self._schema_version(conn) < SCHEMA_VERSION:
                conn.execute(CREATE_SCHEMA)
                conn.execute(CLEAR_SCHEMA_VERSION)
                conn.execute(RECORD_SCHEMA_VERSION, {"version": SCHEMA_VERSION})

    @staticmethod
    def _schema_version(conn: psycopg.Connection[Any]) -> int:
        if not _first(conn.execute(SCHEMA_EXISTS).fetchone()):
            return 0
        return _first(conn.execute(READ_SCHEMA_VERSION).fetchone())

    def start_run(
        self,
        run_id: UUID,
        range_size: int,
        max_drugs: int | None,
        ranges: Sequence[PlannedRange],
        *,
        mode: str = "full",
        generation: int | None = None,
        source_table: str | None = None,
        changes_source: str | None = None,
        swept: bool = False,
        supersede: bool = False,
        claim_seconds: float = 3600.0,
        plan: Callable[[], Sequence[PlannedRange]] | None = None,
    ) -> list[UUID]:
        """Take the one-writer claim and record the run in one transaction; returns the runs superseded.

        An active run is superseded when asked to, or when its claim expired (no sign of life for
        claim_seconds); otherwise RunActive names it and nothing is recorded. `plan`, if given, plans
        the ranges under the claim, in the same transaction (an incremental run claims its changes
        there: a refused or failed start claims nothing); range_size is then the largest range.
        """
        conn = self._db.connection()
        with translate_errors("recording a run"), conn.transaction():
            conn.execute(LOCK_WRITER)
            params = {"claim": claim_seconds, "source_table": source_table}
            active = [ActiveRun(*row) for row in conn.execute(ACTIVE_RUNS, params)]
            holding = [other for other in active if not other.expired]
            if holding and not supersede:
                raise RunActive(describe_active(holding[0], mode, claim_seconds))
            superseded = [other.run_id for other in active]
            conn.execute(SUPERSEDE_RUNS, {"by": run_id, "run_ids": superseded})
            if plan is not None:
                ranges = plan()
                range_size = max((planned.drug_count for planned in ranges), default=1)
            run = {
                "run_id": run_id, "range_size": range_size, "max_drugs": max_drugs,
                "eligible_drugs": sum(planned.drug_count for planned in ranges), "total_ranges": len(ranges),
                "mode": mode, "generation": generation, "source_table": source_table,
                "changes_source": changes_source, "swept": swept,
            }  # fmt: skip
            conn.execute(INSERT_RUN, run)
            with conn.cursor().copy(COPY_RANGES) as copy:
                for planned in ranges:
                    copy.write_row((run_id, planned.first_id, planned.last_id, planned.drug_count))
        return superseded

    def touch_run(self, run_id: UUID) -> RunTouch | None:
        with translate_errors("touching a run"):
            row = self._db.connection().execute(TOUCH_RUN, {"run_id": run_id}).fetchone()
        return RunTouch(*row) if row else None

    def mark_range_done(
        self, run_id: UUID, first_id: int, drugs_written: int, drugs_skipped: int = 0
    ) -> bool:
        params = {
            "run_id": run_id,
            "first_id": first_id,
            "drugs_written": drugs_written,
            "drugs_skipped": drugs_skipped,
        }
        with translate_errors("marking a range done"):
            return self._db.connection().execute(MARK_RANGE_DONE, params).fetchone() is not None

    def progress(self, run_id: UUID) -> RunProgress | None:
        with translate_errors("reading run progress"):
            row = self._db.connection().execute(RUN_PROGRESS, {"run_id": run_id}).fetchone()
        return RunProgress(*row) if row else None

    def finish_run(self, run_id: UUID) -> bool:
        """Mark the run finished if its ranges and sweep are done; True only for the one call that did.

        A change-capture run releases the changes it synced in the same transaction: no run that
        fails or is abandoned releases any, and no finished run keeps what it synced.
        """
        conn = self._db.connection()
        with translate_errors("finishing a run"), conn.transaction():
            row = conn.execute(FINISH_RUN, {"run_id": run_id}).fetchone()
            if row is not None and row[0] == "capture":
                conn.execute(RELEASE_CHANGES, {"run_id": run_id})
        return row is not None

    def last_complete_run(
        self, source_table: str, after: datetime | None = None
    ) -> tuple[UUID, datetime] | None:
        """(run id, started_at) of the newest complete full or incremental run of the table, if any."""
        params = {"source_table": source_table, "after": after or datetime.min.replace(tzinfo=UTC)}
        with translate_errors("finding the last complete run"):
            row = self._db.connection().execute(LAST_COMPLETE_RUN, params).fetchone()
        return (row[0], row[1]) if row else None

    def mark_enqueued(self, run_id: UUID) -> None:
        self._execute(MARK_ENQUEUED, {"run_id": run_id}, "recording an enqueued run")

    def record_enqueue_error(self, run_id: UUID, error: str) -> None:
        self._execute(RECORD_ENQUEUE_ERROR, {"run_id": run_id, "error": error[:2000]}, "recording an error")

    def mark_sweep_requested(self, run_id: UUID) -> None:
        self._execute(MARK_SWEEP_REQUESTED, {"run_id": run_id}, "recording a sweep")

    def add_removed(self, run_id: UUID, removed: int) -> None:
        """Count documents a sweep page (or a rows message) removed."""
        if removed:
            self._execute(ADD_REMOVED, {"run_id": run_id, "removed": removed}, "counting removed documents")

    def mark_swept(self, run_id: UUID) -> None:
        self._execute(MARK_SWEPT, {"run_id": run_id}, "recording a finished sweep")

    def claim_sweep(self, run_id: UUID, lease_seconds: float) -> bool:
        """True for the one caller that should send the run's sweep now."""
        params = {"run_id": run_id, "lease": lease_seconds}
        return self._returns_row(CLAIM_SWEEP, params, "claiming the sweep")

    def release_sweep(self, run_id: UUID) -> None:
        self._execute(RELEASE_SWEEP, {"run_id": run_id}, "releasing the sweep")

    def claim_announcement(self, run_id: UUID, lease_seconds: float) -> bool:
        """True for the one caller that should announce the run's end now."""
        params = {"run_id": run_id, "lease": lease_seconds}
        return self._returns_row(CLAIM_ANNOUNCEMENT, params, "claiming the announcement")

    def release_announcement(self, run_id: UUID) -> None:
        self._execute(RELEASE_ANNOUNCEMENT, {"run_id": run_id}, "releasing the announcement")

    def mark_announced(self, run_id: UUID) -> None:
        self._execute(MARK_ANNOUNCED, {"run_id": run_id}, "recording the announcement")

    def claim_switch(self, run_id: UUID, lease_seconds: float) -> bool:
        """True for the one caller that should verify the run's generation and switch readers to it."""
        params = {"run_id": run_id, "lease": lease_seconds}
        return self._returns_row(CLAIM_SWITCH, params, "claiming the switch")

    def release_switch(self, run_id: UUID) -> None:
        self._execute(RELEASE_SWITCH, {"run_id": run_id}, "releasing the switch")

    def record_switch_error(self, run_id: UUID, error: str) -> None:
        params = {"run_id": run_id, "error": error[:2000]}
        self._execute(RECORD_SWITCH_ERROR, params, "recording a refused switch")

    def set_generation(self, run_id: UUID, generation: int) -> None:
        self._execute(SET_GENERATION, {"run_id": run_id, "generation": generation}, "recording a generation")

    def mark_switched(self, run_id: UUID) -> None:
        self._execute(MARK_SWITCHED, {"run_id": run_id}, "recording the switch")

    def max_drugs(self, run_id: UUID) -> int | None:
        """The cap of a proof-of-concept run (`sync --max-drugs`), None for a run of the whole catalog."""
        with translate_errors("reading a run's cap"):
            row = self._db.connection().execute(RUN_MAX_DRUGS, {"run_id": run_id}).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def changes_during(self, run_id: UUID) -> int:
        """Distinct drugs change capture recorded for the run's table since it started (0 without capture)."""
        conn = self._db.connection()
        with translate_errors("counting changes during a run"):
            if not _first(conn.execute(CHANGE_TABLE_EXISTS).fetchone()):
                return 0
            return _first(conn.execute(CHANGES_DURING_RUN, {"run_id": run_id}).fetchone())

    def undone_ranges(self, run_id: UUID) -> list[PlannedRange]:
        with translate_errors("reading ranges not done"):
            rows = self._db.connection().execute(UNDONE_RANGES, {"run_id": run_id}).fetchall()
        return [PlannedRange(int(first), int(last), int(count)) for first, last, count in rows]

    def recent_run_ids(self, limit: int) -> list[UUID]:
        with translate_errors("listing runs"):
            rows = self._db.connection().execute(RECENT_RUNS, {"limit": limit}).fetchall()
        return [row[0] for row in rows]

    def _execute(self, query: str, params: dict[str, Any], action: str) -> None:
        with translate_errors(action):
            self._db.connection().execute(query, params)

    def _returns_row(self, query: str, params: dict[str, Any], action: str) -> bool:
        with translate_errors(action):
            return self._db.connection().execute(query, params).fetchone() is not None

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


@dataclass(frozen=True)
class ActiveRun:
    """A run holding (or having held, if expired) the one-writer claim."""

    run_id: UUID
    mode: str
    started_at: datetime
    last_activity: datetime
    expired: bool


def describe_active(holder: ActiveRun, mode: str, claim_seconds: float) -> str:
    """Why a run is refused, naming the run in the way and the two ways out."""
    return (
        f"a {mode} run cannot start: run {holder.run_id} ({holder.mode}, started"
        f" {holder.started_at.isoformat(timespec='seconds')}, last activity"
        f" {holder.last_activity.isoformat(timespec='seconds')}) is still active and only one run"
        f" writes at a time; wait for it (`drugsync status --run {holder.run_id}`), or take over with"
        f" --supersede (its remaining messages are dropped); a run with no activity for"
        f" {claim_seconds:g} s loses its claim by itself (DRUGSYNC_RUN_CLAIM_SECONDS)"
    )


def _first(row: tuple[Any, ...] | None) -> int:
    return int(row[0]) if row else 0
