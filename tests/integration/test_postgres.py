"""Range planning, range reads and the ledger against the real embedded PostgreSQL."""

import itertools
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from console.seed import seed_drugs
from consumer.env import SyncEnv
from consumer.generation import switch_generation
from consumer.run_end import advance_run
from producer.plan import cover_id_space, run_messages
from shared.capture import CREATE_CHANGE_TABLES, ChangeCapture
from shared.ledger import PostgresLedger
from shared.models import BIGINT_MAX, BIGINT_MIN, PlannedRange, RangeMessage, SweepMessage, parse_message
from shared.ports import RunProgress
from shared.postgres import Database, PostgresCatalog
from shared.retry import RetryPolicy
from tests.conftest import Isolated
from tests.fakes import (
    CountingEmbedder,
    FakeCatalog,
    FakeClock,
    FakeDeadline,
    FakeGenerations,
    FakeQueue,
    FakeStore,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def catalog(db: Database, conn: psycopg.Connection, test_env: Isolated) -> PostgresCatalog:
    seed_drugs(conn, test_env.settings, 0)  # creates the empty table
    return PostgresCatalog(db, test_env.settings.table_parts, "id", "eligible")


def _fill(conn: psycopg.Connection, table: str, rows: list[tuple[int, bool]]) -> None:
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    with conn.cursor().copy(
        sql.SQL("COPY {} (id, ndc, name, eligible) FROM STDIN").format(sql.Identifier(table))
    ) as copy:
        for drug_id, eligible in rows:
            copy.write_row((drug_id, f"ndc-{drug_id}", f"drug {drug_id}", eligible))


# Every bigint: clusters at both ends and around zero, and ids anywhere between (gaps of any size).
bigint_ids = st.one_of(
    st.integers(BIGINT_MIN, BIGINT_MIN + 50),
    st.integers(-50, 50),
    st.integers(BIGINT_MAX - 50, BIGINT_MAX),
    st.integers(BIGINT_MIN, BIGINT_MAX),
)
ids_with_eligibility = st.dictionaries(keys=bigint_ids, values=st.booleans(), max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ids_with_eligibility, range_size=st.integers(1, 40), cap=st.none() | st.integers(1, 400))
def test_ranges_cover_every_eligible_id_once_within_the_size_bound(
    conn: psycopg.Connection, catalog: PostgresCatalog, test_env: Isolated, rows, range_size, cap
) -> None:
    _fill(conn, test_env.settings.table, sorted(rows.items()))
    eligible = sorted(i for i, ok in rows.items() if ok)[:cap]

    ranges = catalog.plan_ranges(range_size, cap)

    covered = [i for i in eligible for r in ranges if r.first_id <= i <= r.last_id]
    assert covered == eligible  # every eligible id (up to the cap) in exactly one range
    assert all(a.last_id < b.first_id for a, b in itertools.pairwise(ranges))  # no overlap
    assert all(r.first_id <= r.last_id for r in ranges)
    assert all(0 < r.drug_count <= range_size for r in ranges)
    assert all(a.last_id + 1 == b.first_id for a, b in itertools.pairwise(ranges))  # gap-safe tiling
    for planned in ranges:
        assert planned.drug_count == sum(planned.first_id <= i <= planned.last_id for i in eligible)
    stretched = cover_id_space(ranges)
    if stretched:  # the whole bigint space, in the same number of contiguous ranges
        assert (stretched[0].first_id, stretched[-1].last_id) == (BIGINT_MIN, BIGINT_MAX)
        assert all(a.last_id + 1 == b.first_id for a, b in itertools.pairwise(stretched))
    run_id = uuid.uuid4()
    for body in run_messages(run_id, stretched):  # every planned range travels as a valid message
        message = parse_message(body)
        assert isinstance(message, RangeMessage if stretched else SweepMessage)
        assert message.model_dump_json() == body


def test_every_drug_read_carries_the_time_of_the_snapshot_it_was_read_in(
    conn: psycopg.Connection, catalog: PostgresCatalog, test_env: Isolated
) -> None:
    _fill(conn, test_env.settings.table, [(1, True), (2, True)])
    before = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]

    first = catalog.fetch_range(1, 2).drugs
    second = catalog.fetch_ids([1]).drugs

    assert {drug.read_at for drug in first} == {first[0].read_at}  # one snapshot, one time
    assert first[0].read_at is not None
    assert second[0].read_at is not None
    assert before <= first[0].read_at < second[0].read_at  # a later read is a newer version


def test_every_page_of_eligible_rows_is_read_whatever_the_ids(
    conn: psycopg.Connection, catalog: PostgresCatalog, test_env: Isolated
) -> None:
    ids = [BIGINT_MIN, -5, 0, 7, 3_000_000_000, BIGINT_MAX]
    _fill(conn, test_env.settings.table, [(i, True) for i in ids])

    pages = list(catalog.iter_eligible(page_size=2))

    assert [d.id for page in pages for d in page.drugs] == ids
    assert catalog.qualifying_ids([*ids, 1, -1]) == set(ids)
    assert [d.id for d in catalog.fetch_range(BIGINT_MIN, BIGINT_MAX).drugs] == ids


def test_planning_494k_style_gaps_in_one_query(
    conn: psycopg.Connection, catalog: PostgresCatalog, test_env: Isolated
) -> None:
    seed_drugs(conn, test_env.settings, 5_000)
    ranges = catalog.plan_ranges(1000, None)
    assert sum(r.drug_count for r in ranges) == catalog.count_eligible()
    assert [r.drug_count for r in ranges[:-1]] == [1000] * (len(ranges) - 1)


def test_fetch_range_reads_only_eligible_rows_in_id_order(
    conn: psycopg.Connection, catalog: PostgresCatalog, test_env: Isolated
) -> None:
    _fill(conn, test_env.settings.table, [(1, True), (2, False), (5, True), (9, True)])
    assert [d.id for d in catalog.fetch_range(1, 5).drugs] == [1, 5]


def test_a_broken_row_is_named_by_its_id_and_the_rest_still_read(
    conn: psycopg.Connection, catalog: PostgresCatalog, test_env: Isolated
) -> None:
    _fill(conn, test_env.settings.table, [(1, True), (2, True)])
    conn.execute(
        sql.SQL("UPDATE {} SET ndc = '' WHERE id = 2").format(sql.Identifier(test_env.settings.table))
    )
    fetched = catalog.fetch_range(1, 2)
    assert [d.id for d in fetched.drugs] == [1]
    assert [(f.drug_id, f.error_class) for f in fetched.broken] == [(2, "RowError")]
    assert fetched.broken[0].error.startswith("drug id 2: ndc")


def test_ledger_counts_a_range_once_even_under_concurrent_duplicates(
    db: Database, test_env: Isolated
) -> None:
    url = test_env.env["DATABASE_URL"]
    ledger, run_id = started_run(db, [PlannedRange(1, 10, 10), PlannedRange(11, 20, 7)])
    results: list[bool] = []

    def mark() -> None:
        own = Database(url)
        try:
            results.append(PostgresLedger(own).mark_range_done(run_id, 1, 10))
        finally:
            own.close()

    run_at_once([mark] * 6)

    assert sorted(results) == [False] * 5 + [True]
    progress = ledger.progress(run_id)
    assert progress is not None
    assert (progress.ranges_done, progress.drugs_done, progress.ranges_complete) == (1, 10, False)
    assert ledger.mark_range_done(run_id, 11, 7)
    finished = ledger.progress(run_id)
    assert finished is not None
    assert (finished.ranges_complete, finished.complete, finished.state) == (True, False, "sweeping")
    assert finished.drugs_done == 17
    assert ledger.latest_run_id() == run_id


def test_a_run_finishes_and_is_announced_exactly_once_under_concurrent_consumers(
    db: Database, test_env: Isolated
) -> None:
    # GIVEN a run of 8 ranges, each marked done by its own consumer (its own connection) at once,
    # every consumer then taking the run as far as it can: sweep, finish, announce
    url = test_env.env["DATABASE_URL"]
    ranges = [PlannedRange(i * 10, i * 10 + 9, 10) for i in range(8)]
    ledger, run_id = started_run(db, ranges)
    announced: list[str] = []
    sweeps: list[str] = []
    start = threading.Barrier(len(ranges))

    def consumer(planned: PlannedRange) -> None:
        own = Database(url)
        try:
            env = concurrent_env(PostgresLedger(own), announced, sweeps)
            deadline = FakeDeadline(FakeClock(), 60)
            start.wait()
            env.ledger.mark_range_done(run_id, planned.first_id, 10)
            advance_run(run_id, env, deadline)
            start.wait()
            env.ledger.mark_swept(run_id)  # as each of 8 duplicate sweeps would on reaching its end
            advance_run(run_id, env, deadline)
        finally:
            own.close()

    run_at_once([partial(consumer, planned) for planned in ranges])

    progress = ledger.progress(run_id)
    assert progress is not None
    assert (progress.state, progress.announced_at is not None) == ("complete", True)
    assert announced == [str(run_id)]
    assert len(sweeps) == 1  # one sweep, however many consumers found every range done at once
    assert ledger.finish_run(run_id) is False  # finishing again changes nothing


def test_a_sweep_claim_is_held_once_and_lapses_for_a_holder_that_died(db: Database) -> None:
    ledger, run_id = started_run(db, [PlannedRange(1, 10, 10)])
    assert ledger.claim_sweep(run_id, lease_seconds=60) is False  # a range is not done yet
    ledger.mark_range_done(run_id, 1, 10)

    assert ledger.claim_sweep(run_id, lease_seconds=60) is True
    assert ledger.claim_sweep(run_id, lease_seconds=60) is False  # held
    assert ledger.claim_sweep(run_id, lease_seconds=0) is True  # lapsed: the holder died before sending
    ledger.release_sweep(run_id)  # its send failed
    assert ledger.claim_sweep(run_id, lease_seconds=60) is True
    ledger.mark_swept(run_id)
    assert ledger.claim_sweep(run_id, lease_seconds=0) is False  # swept: nothing to send


def test_a_run_finishes_only_after_its_ranges_and_its_sweep(db: Database) -> None:
    ledger, run_id = started_run(db, [PlannedRange(1, 10, 10), PlannedRange(11, 20, 10)])
    ledger.mark_range_done(run_id, 1, 10)
    ledger.mark_swept(run_id)  # a sweep cannot count while a range is open
    assert ledger.finish_run(run_id) is False
    ledger.mark_range_done(run_id, 11, 10)
    assert ledger.finish_run(run_id) is False  # every range done, but not swept
    ledger.mark_swept(run_id)
    assert ledger.finish_run(run_id) is True
    assert ledger.finish_run(run_id) is False


def test_an_announcement_claim_is_held_once_lapses_is_released_and_ends_with_the_announcement(
    db: Database,
) -> None:
    ledger, run_id = started_run(db, [PlannedRange(1, 10, 10)])
    assert ledger.claim_announcement(run_id, lease_seconds=60) is False  # not finished yet
    ledger.mark_range_done(run_id, 1, 10)
    ledger.mark_swept(run_id)
    ledger.finish_run(run_id)

    assert ledger.claim_announcement(run_id, lease_seconds=60) is True
    assert ledger.claim_announcement(run_id, lease_seconds=60) is False  # held
    assert ledger.claim_announcement(run_id, lease_seconds=0) is True  # lapsed: its holder died
    ledger.release_announcement(run_id)  # the announcement failed
    assert ledger.claim_announcement(run_id, lease_seconds=60) is True
    ledger.mark_announced(run_id)
    assert ledger.claim_announcement(run_id, lease_seconds=0) is False  # announced: never again


V1_LEDGER = """
CREATE TABLE drugsync_runs (run_id uuid PRIMARY KEY, started_at timestamptz NOT NULL DEFAULT now(),
    range_size integer NOT NULL, max_drugs bigint, eligible_drugs bigint NOT NULL,
    total_ranges integer NOT NULL, finished_at timestamptz);
CREATE TABLE drugsync_ranges (run_id uuid NOT NULL REFERENCES drugsync_runs ON DELETE CASCADE,
    first_id bigint NOT NULL, last_id bigint NOT NULL, expected_count integer NOT NULL,
    drugs_written integer, done_at timestamptz, PRIMARY KEY (run_id, first_id));
"""


def test_a_ledger_of_the_first_version_is_migrated_and_its_finished_runs_stay_announced(
    conn: psycopg.Connection, test_env: Isolated
) -> None:
    # GIVEN a ledger as v1 left it, in a schema of its own: one run finished, one running
    schema = f"legacy_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    conn.execute(V1_LEDGER)
    done, running = uuid.uuid4(), uuid.uuid4()
    conn.execute("INSERT INTO drugsync_runs VALUES (%s, now(), 10, NULL, 10, 1, now())", [done])
    conn.execute("INSERT INTO drugsync_ranges VALUES (%s, 1, 10, 10, 10, now())", [done])
    conn.execute("INSERT INTO drugsync_runs VALUES (%s, now(), 10, NULL, 10, 1, NULL)", [running])
    conn.execute("INSERT INTO drugsync_ranges VALUES (%s, 1, 10, 10, NULL, NULL)", [running])
    url = f"{test_env.env['DATABASE_URL']}&options=-csearch_path%3D{schema}"
    legacy = Database(url)
    try:
        ledger = PostgresLedger(legacy)

        ledger.ensure_schema()

        finished, unfinished = ledger.progress(done), ledger.progress(running)
        assert finished is not None
        assert unfinished is not None
        assert (finished.state, unfinished.state) == ("complete", "running")
        assert ledger.claim_announcement(done, lease_seconds=0) is False  # announced by v1
        assert ledger.mark_range_done(running, 1, 10) is True
        assert ledger.claim_sweep(running, lease_seconds=60) is True  # the running one goes on in v2
    finally:
        legacy.close()
        conn.execute("RESET search_path")
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_the_ledger_schema_check_takes_no_lock_once_current(db: Database, test_env: Isolated) -> None:
    url = test_env.env["DATABASE_URL"]
    PostgresLedger(db).ensure_schema()
    reader = psycopg.connect(url)  # a transaction holding ACCESS SHARE, as a running status read does
    try:
        reader.execute("SELECT count(*) FROM drugsync_runs")
        other = Database(url)
        try:
            other.connection().execute("SET lock_timeout = '2s'")
            PostgresLedger(other).ensure_schema()  # ALTER TABLE would wait for the reader and time out
        finally:
            other.close()
    finally:
        reader.close()


def started_run(db: Database, ranges: list[PlannedRange]) -> tuple[PostgresLedger, uuid.UUID]:
    """A run of these ranges recorded in the real ledger."""
    ledger = PostgresLedger(db)
    ledger.ensure_schema()
    run_id = uuid.uuid4()
    ledger.start_run(run_id, 10, None, ranges)
    return ledger, run_id


def run_at_once(actions: list[Callable[[], None]]) -> None:
    """Each action in a thread of its own, all started before any is awaited."""
    threads = [threading.Thread(target=action) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class _RecordingAnnouncer:
    def __init__(self, announced: list[str]) -> None:
        self._announced = announced

    def announce(self, progress: RunProgress) -> None:
        self._announced.append(str(progress.run_id))


class _RecordingQueue:
    def __init__(self, sent: list[str]) -> None:
        self._sent = sent

    def send_messages(self, bodies, attributes=None, delay_seconds=0) -> int:
        self._sent.extend(bodies)
        return len(bodies)


def concurrent_env(ledger: PostgresLedger, announced: list[str], sweeps: list[str]) -> SyncEnv:
    return SyncEnv(
        catalog=FakeCatalog([]), embedder=CountingEmbedder(), store=FakeStore(), ledger=ledger,
        work_queue=_RecordingQueue(sweeps), dead_letters=FakeQueue(), retry=RetryPolicy(budget_seconds=0),
        chunk_size=10, margin_seconds=0, seconds_per_drug=0.01, announcer=_RecordingAnnouncer(announced),
    )  # fmt: skip


def test_a_row_without_updated_at_is_read_as_a_drug_not_a_broken_row(
    conn: psycopg.Connection, catalog: PostgresCatalog, test_env: Isolated
) -> None:
    table = sql.Identifier(test_env.settings.table)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN updated_at DROP NOT NULL").format(table))
    conn.execute(
        sql.SQL("INSERT INTO {} (id, ndc, name, eligible, updated_at) VALUES (7, 'n-7', 'drug 7', true, NULL)")
        .format(table)
    )  # fmt: skip

    fetched = catalog.fetch_range(0, 10)

    assert fetched.broken == []
    assert [(drug.id, drug.updated_at) for drug in fetched.drugs] == [(7, None)]


def test_one_caller_claims_a_runs_switch_and_a_refusal_lets_a_later_one_try_again(
    db: Database, test_env: Isolated
) -> None:
    # GIVEN a rebuild into generation 3, its one range done but not yet swept
    ledger = PostgresLedger(db)
    ledger.ensure_schema()
    run_id = uuid.uuid4()
    ledger.start_run(run_id, 10, None, [PlannedRange(1, 10, 10)], mode="rebuild", generation=3)
    ledger.mark_range_done(run_id, 1, 10)
    assert ledger.claim_switch(run_id, lease_seconds=60) is False  # not before the sweep

    # WHEN it is swept and eight callers claim the switch at once
    ledger.mark_swept(run_id)
    claims: list[bool] = []

    def claim() -> None:
        own = Database(test_env.env["DATABASE_URL"])  # a consumer of its own
        try:
            claims.append(PostgresLedger(own).claim_switch(run_id, 60))
        finally:
            own.close()

    run_at_once([claim] * 8)

    # THEN exactly one holds it; a refusal releases it with its reason, and a switch records the moment
    assert sorted(claims) == [False] * 7 + [True]
    ledger.record_switch_error(run_id, "the index holds 9 of the 10 documents")
    refused = ledger.progress(run_id)
    assert refused is not None
    assert (refused.mode, refused.generation, refused.state) == ("rebuild", 3, "switch_refused")
    assert refused.switch_error == "the index holds 9 of the 10 documents"
    assert ledger.claim_switch(run_id, lease_seconds=60) is True
    ledger.mark_switched(run_id)
    switched = ledger.progress(run_id)
    assert switched is not None
    assert (switched.switch_error, switched.switched_at is not None) == (None, True)
    assert ledger.claim_switch(run_id, lease_seconds=0) is False  # switched: never again


def test_a_superseded_rebuild_is_never_swept_nor_claims_its_switch(db: Database) -> None:
    # GIVEN two rebuilds whose one range is done: the first superseded before its sweep counted,
    # the second swept, then superseded before its switch
    ledger = PostgresLedger(db)
    ledger.ensure_schema()
    unswept, swept = uuid.uuid4(), uuid.uuid4()
    ledger.start_run(unswept, 10, None, [PlannedRange(1, 10, 10)], mode="rebuild", generation=2)
    ledger.mark_range_done(unswept, 1, 10)
    ledger.start_run(swept, 10, None, [PlannedRange(1, 10, 10)], mode="rebuild", generation=3, supersede=True)
    ledger.mark_range_done(swept, 1, 10)
    ledger.mark_swept(swept)
    ledger.start_run(uuid.uuid4(), 10, None, [PlannedRange(1, 10, 10)], mode="rebuild", supersede=True)

    # WHEN the first one's sweep ends, and each tries to claim its switch
    ledger.mark_swept(unswept)

    # THEN neither counts: a superseded run never switches readers to its generation
    progress = ledger.progress(unswept)
    assert progress is not None
    assert (progress.state, progress.swept_at) == ("superseded", None)
    assert ledger.claim_switch(unswept, lease_seconds=0) is False
    assert ledger.claim_switch(swept, lease_seconds=0) is False


def test_changes_during_a_run_are_the_distinct_drugs_of_its_table_recorded_since_it_started(
    conn: psycopg.Connection, test_env: Isolated
) -> None:
    # GIVEN a ledger in a schema of its own, without change capture
    schema = f"changes_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    own = Database(f"{test_env.env['DATABASE_URL']}&options=-csearch_path%3D{schema}")
    try:
        ledger = PostgresLedger(own)
        ledger.ensure_schema()
        run_id = uuid.uuid4()
        ledger.start_run(run_id, 10, None, [PlannedRange(1, 10, 10)], mode="rebuild", source_table="cat_a")
        assert ledger.changes_during(run_id) == 0  # no change table: nothing is known

        # WHEN capture's table records drug 5 twice and 6 since the run started, 7 before, 8 elsewhere
        own.connection().execute(CREATE_CHANGE_TABLES)
        own.connection().execute(
            "INSERT INTO drugsync_changes (source_table, drug_id, changed_at) VALUES"
            " ('cat_a', 5, now()), ('cat_a', 5, now()), ('cat_a', 6, now()),"
            " ('cat_a', 7, now() - interval '1 hour'), ('cat_b', 8, now())"
        )

        # THEN two drugs changed during the run
        assert ledger.changes_during(run_id) == 2
    finally:
        own.close()
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_a_rebuild_switches_though_the_catalog_was_edited_while_it_ran(
    db: Database, conn: psycopg.Connection, test_env: Isolated
) -> None:
    # GIVEN change capture on the catalog, generation 1 current and a rebuild's generation 2 holding
    # every eligible drug as its one range read them
    eligible = seed_drugs(conn, test_env.settings, 40)
    ChangeCapture(db, test_env.settings.table_parts, "id", "eligible").install()
    catalog = PostgresCatalog(db, test_env.settings.table_parts, "id", "eligible")
    ledger = PostgresLedger(db)
    ledger.ensure_schema()
    gens = FakeGenerations()
    gens.switch(gens.begin("hashing-v1-32", 32, "run-1").number)
    run_id = uuid.uuid4()
    number = gens.begin("hashing-v1-32", 32, str(run_id)).number
    ranges = cover_id_space(catalog.plan_ranges(1000, None))
    ledger.start_run(run_id, 1000, None, ranges, mode="rebuild", generation=number,
                     source_table=catalog.table_name)  # fmt: skip
    gens.store(number).documents = {i: {"embedding": [0.1] * 32} for i in range(eligible)}
    ledger.mark_range_done(run_id, ranges[0].first_id, eligible)
    ledger.mark_swept(run_id)

    # WHEN a drug is added to the catalog (after its range was read) and the switch is verified
    conn.execute(
        sql.SQL("INSERT INTO {} (id, ndc, name, eligible) VALUES (9000000, 'n-new', 'new drug', true)")
        .format(sql.Identifier(*test_env.settings.table_parts))
    )  # fmt: skip
    assert catalog.count_eligible() == eligible + 1
    env = replace(concurrent_env(ledger, [], []), catalog=catalog, generations=gens)
    progress = ledger.progress(run_id)
    assert progress is not None
    switched = switch_generation(progress, env, FakeDeadline(FakeClock(), 1000))

    # THEN the change explains the count, and readers are on generation 2
    assert (switched, ledger.progress(run_id).switch_error, gens.read().current) == (True, None, 2)  # type: ignore[union-attr]
