"""Change capture in the source database: triggers record the id of every changed drug.

`drugsync capture install` (once, by an operator allowed to create triggers) adds a change table and
triggers on the source table; incremental runs claim what the table holds and the ledger releases it
when the run completes (shared/ledger.py, FINISH_RUN). Without the triggers, incremental runs fall
back to the `updated_at` watermark (`changed_since`) and find deletions with their sweep.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from shared.errors import CaptureBusy, ConfigError
from shared.models import TEXT_FIELDS
from shared.postgres import Database, translate_errors

# Statements that lock the live table (CREATE OR REPLACE TRIGGER: SHARE ROW EXCLUSIVE, which
# blocks writers; DROP TRIGGER: ACCESS EXCLUSIVE) give up after this long instead of queueing
# behind a long transaction, where every later reader or writer of the table would queue behind
# them (https://www.postgresql.org/docs/current/explicit-locking.html).
LOCK_TIMEOUT_SECONDS = 3.0
SET_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %(timeout)s, true)"

# drugsync's own tables: changes of every captured table (named by source_table, as settings name
# it, so two catalogs in one database never read each other's), and when each was captured from.
CREATE_CHANGE_TABLES = """
CREATE TABLE IF NOT EXISTS drugsync_changes (
    seq          bigserial PRIMARY KEY,
    source_table text NOT NULL,
    drug_id      bigint NOT NULL,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    run_id       uuid
);
CREATE INDEX IF NOT EXISTS drugsync_changes_run_id ON drugsync_changes (run_id);
CREATE TABLE IF NOT EXISTS drugsync_capture (
    source_table text PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE drugsync_capture ADD COLUMN IF NOT EXISTS truncated_at timestamptz;
"""

# One function for every captured table: TG_ARGV[0] names the id column, TG_ARGV[1] the table as
# settings name it. An UPDATE that changes the id records both ids (the old one must be removed).
# SECURITY DEFINER: it inserts as the role that installed it, so the application roles writing the
# table need no grant on drugsync_changes (without it, their writes would fail); its search_path is
# pinned and the change table named with its schema, as PostgreSQL advises for such functions
# (https://www.postgresql.org/docs/current/sql-createfunction.html#SQL-CREATEFUNCTION-SECURITY).
# It returns NULL: the result of an AFTER trigger is ignored.
CREATE_RECORD_FUNCTION = """
CREATE OR REPLACE FUNCTION drugsync_record_change() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id bigint;
    old_id bigint;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        new_id := (to_jsonb(NEW) ->> TG_ARGV[0])::bigint;
        INSERT INTO {changes} (source_table, drug_id) VALUES (TG_ARGV[1], new_id);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_id := (to_jsonb(OLD) ->> TG_ARGV[0])::bigint;
        IF old_id IS DISTINCT FROM new_id THEN
            INSERT INTO {changes} (source_table, drug_id) VALUES (TG_ARGV[1], old_id);
        END IF;
    END IF;
    RETURN NULL;
END
$$
"""
# The schema drugsync_changes was found in (or created in), for the function to name it by.
CHANGE_TABLE_SCHEMA = """
SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('drugsync_changes')
"""

# TRUNCATE fires no row trigger: a statement trigger notes when, and the next incremental run sweeps.
CREATE_TRUNCATE_FUNCTION = """
CREATE OR REPLACE FUNCTION drugsync_record_truncate() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE {capture} SET truncated_at = now() WHERE source_table = TG_ARGV[0];
    RETURN NULL;
END
$$
"""
CREATE_TRUNCATE_TRIGGER = """
CREATE OR REPLACE TRIGGER drugsync_capture_truncate AFTER TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION drugsync_record_truncate({source})
"""

# Two row triggers, because a WHEN clause of an INSERT trigger cannot name OLD: every insert and delete,
# and the updates that change what drugsync syncs (a text field, the id, the eligibility): an edit
# of updated_at alone, or of a column drugsync never reads, records nothing.
# CREATE OR REPLACE TRIGGER needs PostgreSQL 14 or later.
CREATE_ROW_TRIGGER = """
CREATE OR REPLACE TRIGGER drugsync_capture_rows AFTER INSERT OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION drugsync_record_change({id_name}, {source})
"""
CREATE_UPDATE_TRIGGER = """
CREATE OR REPLACE TRIGGER drugsync_capture_update AFTER UPDATE ON {table}
FOR EACH ROW WHEN (({old_columns}) IS DISTINCT FROM ({new_columns}))
EXECUTE FUNCTION drugsync_record_change({id_name}, {source})
"""
# Installed anew (or over a broken install), capture counts from now: a full run must follow. Over a
# complete install nothing was missed, so it still counts from when it began (%(intact)s).
RECORD_INSTALL = """
INSERT INTO drugsync_capture (source_table) VALUES (%(source)s)
ON CONFLICT (source_table) DO UPDATE SET installed_at = now() WHERE NOT %(intact)s
"""

DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS drugsync_capture_rows ON {table};
DROP TRIGGER IF EXISTS drugsync_capture_update ON {table};
DROP TRIGGER IF EXISTS drugsync_capture_truncate ON {table}
"""
FORGET_INSTALL = "DELETE FROM drugsync_capture WHERE source_table = %(source)s"
# The shared functions go with the last trigger that calls them.
DROP_UNUSED_FUNCTIONS = """
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['drugsync_record_change', 'drugsync_record_truncate'] LOOP
        IF to_regproc(name) IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgfoid = to_regproc(name)) THEN
            EXECUTE format('DROP FUNCTION %I()', name);
        END IF;
    END LOOP;
END
$$
"""

CHANGE_TABLES_EXIST = "SELECT to_regclass('drugsync_capture') IS NOT NULL"
TRIGGERS_ON_TABLE = """
SELECT count(*) FROM pg_trigger
WHERE tgrelid = to_regclass(%(table)s)
  AND tgname IN ('drugsync_capture_rows', 'drugsync_capture_update', 'drugsync_capture_truncate')
"""
INSTALLED_AT = "SELECT installed_at, truncated_at FROM drugsync_capture WHERE source_table = %(source)s"
TRIGGERS = 3
PENDING = """
SELECT count(*), count(*) FILTER (WHERE run_id IS NULL) FROM drugsync_changes WHERE source_table = %(source)s
"""

# Claim exactly the committed rows visible now, and rows left by runs that did not complete (or
# failed on them). An UPDATE skips rows of transactions still in flight; a bound on seq would not
# (a lower seq may commit after a higher one), and the rows it skipped would be released unseen.
CLAIM = """
UPDATE drugsync_changes SET run_id = %(run_id)s
WHERE source_table = %(source)s AND (run_id IS NULL OR run_id <> %(run_id)s)
RETURNING drug_id
"""

# Run by the ledger in the transaction that finishes a capture run: what the run synced is
# forgotten, but for ids still failing in it, which the next incremental run claims again.
RELEASE_CHANGES = """
DELETE FROM drugsync_changes c
WHERE c.run_id = %(run_id)s AND NOT EXISTS (
    SELECT 1 FROM drugsync_failures f
    WHERE f.run_id = c.run_id AND f.drug_id = c.drug_id AND f.resolved_at IS NULL
)
"""

# The watermark: rows written since `since`, eligible or not (a de-listed row must be removed).
# Without an index on updated_at this reads the whole table (see the README's costs).
CHANGED_SINCE = "SELECT {id} FROM {table} WHERE updated_at >= %(since)s ORDER BY {id}"


@dataclass(frozen=True)
class CaptureStatus:
    """Whether changes of the source table are captured, since when, and how many wait."""

    source_table: str
    triggers: int  # of TRIGGERS
    installed_at: datetime | None
    pending: int = 0
    unclaimed: int = 0
    truncated_at: datetime | None = None  # the last TRUNCATE of the table since capture began

    @property
    def installed(self) -> bool:
        return self.triggers == TRIGGERS and self.installed_at is not None

    @property
    def broken(self) -> str | None:
        """Why capture is half there (a trigger dropped by hand, a record without triggers), if it is."""
        if self.installed or (self.triggers == 0 and self.installed_at is None):
            return None
        return (
            f"change capture on {self.source_table} is incomplete ({self.triggers} of {TRIGGERS} triggers,"
            f" {'recorded' if self.installed_at else 'not recorded'} as installed): changes may have"
            " been missed; run `drugsync capture install` and then a full sync, or `drugsync capture"
            " remove` to use the updated_at watermark"
        )


class ChangeCapture:
    """The change table and triggers of one source table (names from settings, quoted)."""

    def __init__(self, db: Database, table: tuple[str, ...], id_column: str, eligible: str) -> None:
        self._db = db
        self.source_table = ".".join(table)
        columns = (id_column, eligible, *TEXT_FIELDS)
        self._names = {
            "table": sql.Identifier(*table),
            "id": sql.Identifier(id_column),
            "id_name": sql.Literal(id_column),
            "source": sql.Literal(self.source_table),
            "old_columns": sql.SQL(", ").join(sql.SQL("OLD.{}").format(sql.Identifier(c)) for c in columns),
            "new_columns": sql.SQL(", ").join(sql.SQL("NEW.{}").format(sql.Identifier(c)) for c in columns),
        }

    def _query(self, template: str) -> sql.Composed:
        return sql.SQL(template).format(**self._names)

    def install(self, lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> CaptureStatus:
        """Create the change table, the function and the triggers, all or nothing; again is harmless."""
        steps = (CREATE_RECORD_FUNCTION, CREATE_ROW_TRIGGER, CREATE_UPDATE_TRIGGER,
                 CREATE_TRUNCATE_FUNCTION, CREATE_TRUNCATE_TRIGGER)  # fmt: skip
        with self._locking("installing change capture", lock_timeout_seconds) as conn:
            intact = self._intact(conn)
            conn.execute(CREATE_CHANGE_TABLES)
            schema = _first(conn.execute(CHANGE_TABLE_SCHEMA).fetchone())
            changes, capture = (
                sql.Identifier(schema, "drugsync_changes"),
                sql.Identifier(schema, "drugsync_capture"),
            )
            for step in steps:
                conn.execute(sql.SQL(step).format(changes=changes, capture=capture, **self._names))
            conn.execute(RECORD_INSTALL, {"source": self.source_table, "intact": intact})
        return self.status()

    def _intact(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether every trigger is there and the install recorded: no change was missed since."""
        table = self._names["table"].as_string(conn)
        triggers = _first(conn.execute(TRIGGERS_ON_TABLE, {"table": table}).fetchone())
        if triggers != TRIGGERS or not _first(conn.execute(CHANGE_TABLES_EXIST).fetchone()):
            return False
        return conn.execute(INSTALLED_AT, {"source": self.source_table}).fetchone() is not None

    def remove(self, lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> None:
        """Drop the triggers (and the functions, once unused); the change table and its rows stay."""
        with self._locking("removing change capture", lock_timeout_seconds) as conn:
            conn.execute(self._query(DROP_TRIGGERS))
            if _first(conn.execute(CHANGE_TABLES_EXIST).fetchone()):
                conn.execute(FORGET_INSTALL, {"source": self.source_table})
            conn.execute(DROP_UNUSED_FUNCTIONS)

    def _locking(self, action: str, timeout: float) -> AbstractContextManager[psycopg.Connection[Any]]:
        return _locked_transaction(self._db, self.source_table, action, timeout)

    def status(self) -> CaptureStatus:
        conn = self._db.connection()
        with translate_errors("reading the change capture"):
            table = self._names["table"].as_string(conn)
            if conn.execute("SELECT to_regclass(%s)", [table]).fetchone() == (None,):
                raise ConfigError(f"no table {self.source_table} in the database (DRUGSYNC_TABLE)")
            triggers = _first(conn.execute(TRIGGERS_ON_TABLE, {"table": table}).fetchone())
            if not _first(conn.execute(CHANGE_TABLES_EXIST).fetchone()):
                return CaptureStatus(self.source_table, triggers, None)
            row = conn.execute(INSTALLED_AT, {"source": self.source_table}).fetchone()
            pending, unclaimed = conn.execute(PENDING, {"source": self.source_table}).fetchone() or (0, 0)
        installed_at, truncated_at = row or (None, None)
        return CaptureStatus(self.source_table, triggers, installed_at, pending, unclaimed, truncated_at)

    def claim(self, run_id: UUID) -> list[int]:
        """The distinct changed ids, sorted, now claimed by this run."""
        with translate_errors("claiming changes"):
            rows = self._db.connection().execute(CLAIM, {"run_id": run_id, "source": self.source_table})
            return sorted({int(row[0]) for row in rows.fetchall()})

    def changed_since(self, since: datetime) -> list[int]:
        """Ids of rows whose updated_at is at or after `since`, eligible or not, sorted."""
        with translate_errors("reading rows changed since the watermark"):
            rows = self._db.connection().execute(self._query(CHANGED_SINCE), {"since": since}).fetchall()
        return [int(row[0]) for row in rows]


@contextmanager
def _locked_transaction(
    db: Database, table: str, action: str, timeout: float
) -> Iterator[psycopg.Connection[Any]]:
    """A transaction whose lock waits time out; a timeout becomes CaptureBusy, saying what to do."""
    conn = db.connection()
    with translate_errors(action):
        try:
            with conn.transaction():  # rolls back on any error: all or nothing
                conn.execute(SET_LOCK_TIMEOUT, {"timeout": f"{int(timeout * 1000)}ms"})
                yield conn
        except psycopg.errors.LockNotAvailable:
            raise CaptureBusy(
                f"{action}: no lock on {table} within {timeout:g}s, as a long transaction holds one;"
                " nothing was changed. Try again once it has ended (pg_stat_activity shows old"
                " transactions)"
            ) from None
        except psycopg.errors.InsufficientPrivilege as error:
            raise ConfigError(
                f"{action}: not permitted ({error.diag.message_primary}); a role that owns {table}"
                " must do it. Without capture, incremental runs use the updated_at watermark"
            ) from None


def _first(row: tuple[Any, ...] | None) -> Any:
    return row[0] if row else None
