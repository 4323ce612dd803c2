"""PostgreSQL adapter: connections, and the source catalog of drugs."""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any

import psycopg
from psycopg import sql
from pydantic import ValidationError

from shared.describe import validation_problems
from shared.errors import ConfigError, RowError, UnavailableError
from shared.models import TEXT_FIELDS, Drug, Fetched, PlannedRange, RowFailure
from shared.redact import MASK, redact_known, redact_url, remember_secrets

# Ranges of at most range_size eligible rows. Eligible rows are numbered in id order and bucketed
# by row number, so gaps in the ids never matter; each range then starts right after the previous
# one ends, so the ranges tile the id space and a row inserted into a gap is still covered.
PLAN_RANGES = """
WITH numbered AS (
    SELECT {id} AS id, (row_number() OVER (ORDER BY {id}) - 1) / %(range_size)s AS bucket
    FROM {table}
    WHERE {eligible} IS TRUE
    ORDER BY {id}
    LIMIT %(max_drugs)s
), buckets AS (
    SELECT bucket, min(id) AS first_id, max(id) AS last_id, count(*) AS drug_count
    FROM numbered GROUP BY bucket
)
SELECT coalesce(lag(last_id) OVER (ORDER BY bucket) + 1, first_id), last_id, drug_count
FROM buckets ORDER BY bucket
"""

# The eligible rows of one range, through the primary-key index, with the time of the statement's
# snapshot (READ COMMITTED takes one per statement, as it starts): the version of what was read.
FETCH_RANGE = """
SELECT {id}, {text_columns}, updated_at, statement_timestamp()
FROM {table}
WHERE {id} BETWEEN %(first_id)s AND %(last_id)s AND {eligible} IS TRUE
ORDER BY {id}
"""

# Specific eligible rows: rows isolated as poison, coming back from the DLQ.
FETCH_IDS = """
SELECT {id}, {text_columns}, updated_at, statement_timestamp()
FROM {table}
WHERE {id} = ANY(%(ids)s) AND {eligible} IS TRUE
ORDER BY {id}
"""

# Eligible rows in id order, a page at a time (keyset pagination: no long transaction, no OFFSET).
# The first page has no lower bound: no bigint lies below the smallest id to start "after".
FIRST_PAGE_ELIGIBLE = """
SELECT {id}, {text_columns}, updated_at
FROM {table}
WHERE {eligible} IS TRUE
ORDER BY {id}
LIMIT %(page_size)s
"""
PAGE_ELIGIBLE = """
SELECT {id}, {text_columns}, updated_at
FROM {table}
WHERE {id} > %(after_id)s AND {eligible} IS TRUE
ORDER BY {id}
LIMIT %(page_size)s
"""

# Which of these ids are eligible rows now: what a sweep keeps.
QUALIFYING_IDS = "SELECT {id} FROM {table} WHERE {id} = ANY(%(ids)s) AND {eligible} IS TRUE"

COUNT_ELIGIBLE = "SELECT count(*) FROM {table} WHERE {eligible} IS TRUE"

COUNT_RANGE = """
SELECT count(*) FROM {table}
WHERE {id} BETWEEN %(first_id)s AND %(last_id)s AND {eligible} IS TRUE
"""


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection; a failure to connect is worth retrying and never shows the password."""
    remember_secrets(url)
    if _raw_at_in_password(url):
        raise ConfigError(
            "the database URL's password holds a raw '@', which libpq reads as the end of the"
            " password (and the rest as the host): percent-encode it as %40"
        )
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="drugsync")
    except psycopg.ProgrammingError as error:
        # libpq could not parse the connection string. Its message quotes the part it choked on,
        # which may be any fragment of the password: neither that text nor the cause survives.
        raise ConfigError(f"malformed database connection string: {_blank_quoted(str(error))}") from None
    except psycopg.OperationalError as error:
        where = redact_url(url)
        message, cause = _without_secrets(f"cannot connect to PostgreSQL at {where}: {error}", error)
        raise UnavailableError(message) from cause


def _raw_at_in_password(url: str) -> bool:
    """A postgresql:// URL with more than one '@' before its path: libpq splits at the first one."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in ("postgres", "postgresql"):
        return False
    return rest.split("/", 1)[0].split("?", 1)[0].count("@") > 1


_LIBPQ_LITERAL = '"="'  # what libpq quotes of its own ('missing "=" after ...')


def _blank_quoted(message: str) -> str:
    """libpq's message with everything it quoted, but its own '"="', replaced by '***'."""
    kept = message.strip().replace(_LIBPQ_LITERAL, "\x00")
    first, last = kept.find('"'), kept.rfind('"')
    if first != -1:
        kept = f'{kept[:first]}"{MASK}"{kept[last + 1 :] if last > first else ""}'
    return redact_known(kept).replace("\x00", _LIBPQ_LITERAL)


def _without_secrets(message: str, cause: BaseException) -> tuple[str, BaseException | None]:
    """The message without any known password, and the cause to chain: none if its text held one.

    A chained cause is printed with the traceback (Lambda logs it), so it must not hold one either.
    """
    safe = redact_known(message)
    leaks = safe != message or redact_known(str(cause)) != str(cause)
    return safe, None if leaks else cause


@contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Connection-level psycopg failures are worth retrying; SQL errors are not. No password shows."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as error:
        message, cause = _without_secrets(f"PostgreSQL failed while {action}: {error}", error)
        raise UnavailableError(message) from cause


class Database:
    """One autocommit connection, opened on first use and replaced when it breaks.

    After a restart or failover the old connection is `broken`; the next call (a retry) reconnects.
    The URL is asked for at every connect, so a warm Lambda whose database password was rotated in
    Secrets Manager reconnects with the new one instead of failing until its messages dead-letter.
    """

    def __init__(self, url: str | Callable[[], str]) -> None:
        self._url = url if callable(url) else partial(str, url)
        if isinstance(url, str):
            remember_secrets(url)  # known before the first connect, for errors raised before it
        self._conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = connect(self._url())
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresCatalog:
    """The source table, with table and column names taken from settings as quoted identifiers."""

    def __init__(self, db: Database, table: tuple[str, ...], id_column: str, eligible: str) -> None:
        self._db = db
        self.table_name = ".".join(table)
        self._names = {
            "table": sql.Identifier(*table),
            "id": sql.Identifier(id_column),
            "eligible": sql.Identifier(eligible),
            "text_columns": sql.SQL(", ").join(sql.Identifier(name) for name in TEXT_FIELDS),
        }

    def _query(self, template: str) -> sql.Composed:
        return sql.SQL(template).format(**self._names)

    def plan_ranges(self, range_size: int, max_drugs: int | None) -> list[PlannedRange]:
        params = {"range_size": range_size, "max_drugs": max_drugs}
        with translate_errors("planning ranges"):
            rows = self._db.connection().execute(self._query(PLAN_RANGES), params).fetchall()
        return [PlannedRange(first_id, last_id, count) for first_id, last_id, count in rows]

    def fetch_range(self, first_id: int, last_id: int) -> Fetched:
        params = {"first_id": first_id, "last_id": last_id}
        with translate_errors(f"reading ids {first_id}..{last_id}"):
            rows = self._db.connection().execute(self._query(FETCH_RANGE), params).fetchall()
        return _parse_snapshot(rows)

    def fetch_ids(self, ids: Sequence[int]) -> Fetched:
        with translate_errors(f"reading {len(ids)} ids"):
            rows = self._db.connection().execute(self._query(FETCH_IDS), {"ids": list(ids)}).fetchall()
        return _parse_snapshot(rows)

    def iter_eligible(self, page_size: int = 5000) -> Iterator[Fetched]:
        """Every eligible row, a page at a time, streamed rather than loaded at once."""
        for rows in self.iter_eligible_rows(page_size):
            yield _parse_rows(rows)

    def iter_eligible_rows(self, page_size: int = 5000) -> Iterator[list[tuple[Any, ...]]]:
        """Raw rows (id, text fields..., updated_at) of every eligible drug, a page at a time."""
        query, params = self._query(FIRST_PAGE_ELIGIBLE), {"page_size": page_size}
        while True:
            with translate_errors("reading eligible drugs"):
                rows = self._db.connection().execute(query, params).fetchall()
            if not rows:
                return
            yield rows
            query, params = self._query(PAGE_ELIGIBLE), {"after_id": rows[-1][0], "page_size": page_size}

    def qualifying_ids(self, ids: Sequence[int]) -> set[int]:
        """Those of `ids` that are eligible rows of the table now."""
        with translate_errors(f"checking {len(ids)} ids"):
            rows = self._db.connection().execute(self._query(QUALIFYING_IDS), {"ids": list(ids)}).fetchall()
        return {int(row[0]) for row in rows}

    def count_eligible(self) -> int:
        with translate_errors("counting eligible drugs"):
            row = self._db.connection().execute(self._query(COUNT_ELIGIBLE)).fetchone()
        return int(row[0]) if row else 0

    def count_range(self, first_id: int, last_id: int) -> int:
        params = {"first_id": first_id, "last_id": last_id}
        with translate_errors(f"counting ids {first_id}..{last_id}"):
            row = self._db.connection().execute(self._query(COUNT_RANGE), params).fetchone()
        return int(row[0]) if row else 0


def _parse_snapshot(rows: Sequence[tuple[Any, ...]]) -> Fetched:
    """Rows whose last column is the statement's snapshot time, which every drug then carries."""
    read_at = rows[0][-1] if rows else None
    return _parse_rows([row[:-1] for row in rows], read_at)


def _parse_rows(rows: Sequence[tuple[Any, ...]], read_at: datetime | None = None) -> Fetched:
    """Valid rows become Drugs; a broken row becomes a RowFailure naming its id, not an exception."""
    drugs: list[Drug] = []
    broken: list[RowFailure] = []
    for row in rows:
        try:
            drugs.append(drug_from_row(row, read_at))
        except RowError as error:
            broken.append(RowFailure(error.drug_id, "RowError", str(error)))
    return Fetched(drugs, broken)


def drug_from_row(row: tuple[Any, ...], read_at: datetime | None = None) -> Drug:
    drug_id, *texts, updated_at = row
    fields = dict(zip(TEXT_FIELDS, texts, strict=True))
    try:
        return Drug(id=drug_id, updated_at=updated_at, read_at=read_at, **fields)
    except ValidationError as error:
        raise RowError(drug_id, validation_problems(error)) from error


# Connections a new client may still open: the limit, less those reserved for superusers, less those open.
FREE_CONNECTIONS = """
SELECT current_setting('max_connections')::int
     - current_setting('superuser_reserved_connections')::int
     - (SELECT count(*) FROM pg_stat_activity)
"""


def free_connections(db: Database) -> int:
    with translate_errors("reading connection limits"):
        row = db.connection().execute(FREE_CONNECTIONS).fetchone()
    return int(row[0]) if row else 0
