"""Change capture against the real embedded PostgreSQL: the triggers really fire, claims see only
what is committed, and a run releases its changes only as it finishes."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from console.seed import seed_drugs
from console.services import Services
from producer.plan import start_sync
from shared.capture import ChangeCapture
from shared.errors import CaptureBusy, ConfigError, RunActive
from shared.ledger import PostgresLedger
from shared.models import ChangesMessage, PlannedRange, RowFailure, SyncRequest, SyncSummary, parse_message
from shared.postgres import Database
from tests.conftest import Isolated
from tests.fakes import FakeGenerations, FakeQueue, FakeStore

pytestmark = pytest.mark.integration


@pytest.fixture
def capture(db: Database, conn: psycopg.Connection, test_env: Isolated) -> ChangeCapture:
    seed_drugs(conn, test_env.settings, 50)
    installed = ChangeCapture(db, test_env.settings.table_parts, "id", "eligible")
    installed.install()
    return installed


def _run(conn: psycopg.Connection, table: str, statement: str, *params: object) -> None:
    conn.execute(sql.SQL(statement).format(table=sql.Identifier(table)), params)


def _recorded(conn: psycopg.Connection, source: str) -> list[int]:
    rows = conn.execute(
        "SELECT drug_id FROM drugsync_changes WHERE source_table = %s ORDER BY seq", [source]
    ).fetchall()
    return [row[0] for row in rows]


def test_the_triggers_record_inserts_synced_edits_deletes_delistings_and_both_ids_of_an_id_change(
    conn: psycopg.Connection, capture: ChangeCapture, test_env: Isolated
) -> None:
    table = test_env.settings.table
    ids = [row[0] for row in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id LIMIT 5").format(
        sql.Identifier(table)))]  # fmt: skip
    _run(conn, table, "INSERT INTO {table} (id, ndc, name) VALUES (900001, 'n', 'new drug')")
    _run(conn, table, "UPDATE {table} SET description = 'edited' WHERE id = %s", ids[0])
    _run(conn, table, "UPDATE {table} SET updated_at = now() WHERE id = %s", ids[1])  # not synced: nothing
    _run(conn, table, "UPDATE {table} SET description = description WHERE id = %s", ids[1])  # no change
    _run(conn, table, "DELETE FROM {table} WHERE id = %s", ids[2])
    _run(conn, table, "UPDATE {table} SET eligible = NOT eligible WHERE id = %s", ids[3])
    _run(conn, table, "UPDATE {table} SET id = 900002 WHERE id = %s", ids[4])

    assert _recorded(conn, table) == [900001, ids[0], ids[2], ids[3], 900002, ids[4]]
    assert capture.status().unclaimed == 6


def test_an_application_role_with_no_grant_on_the_change_table_still_writes_and_is_captured(
    conn: psycopg.Connection, capture: ChangeCapture, test_env: Isolated
) -> None:
    table = test_env.settings.table
    role = sql.Identifier(f"writer_{table}")
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    conn.execute(sql.SQL("GRANT SELECT, UPDATE ON {} TO {}").format(sql.Identifier(table), role))
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
        _run(conn, table, "UPDATE {table} SET name = 'by the app' WHERE id = (SELECT min(id) FROM {table})")
    first = conn.execute(sql.SQL("SELECT min(id) FROM {}").format(sql.Identifier(table))).fetchone()
    assert first is not None
    assert _recorded(conn, table) == [first[0]]


def test_install_and_remove_are_idempotent_and_remove_stops_recording(
    conn: psycopg.Connection, capture: ChangeCapture, test_env: Isolated
) -> None:
    table = test_env.settings.table
    first = capture.status()
    again = capture.install()
    assert (first.installed, again.installed, again.triggers) == (True, True, 3)
    _run(conn, table, "INSERT INTO {table} (id, ndc, name) VALUES (900001, 'n', 'once')")
    assert _recorded(conn, table) == [900001]  # installed twice, still one row per change

    capture.remove()
    capture.remove()
    status = capture.status()
    assert (status.installed, status.triggers, status.installed_at, status.broken) == (False, 0, None, None)
    _run(conn, table, "INSERT INTO {table} (id, ndc, name) VALUES (900002, 'n', 'unseen')")
    assert _recorded(conn, table) == [900001]  # the change table stays; nothing more is recorded


def test_a_trigger_dropped_by_hand_is_reported_as_broken(
    conn: psycopg.Connection, capture: ChangeCapture, test_env: Isolated
) -> None:
    _run(conn, test_env.settings.table, "DROP TRIGGER drugsync_capture_update ON {table}")
    status = capture.status()
    assert not status.installed
    assert "2 of 3 triggers" in (status.broken or "")


def test_a_truncate_is_noted_for_the_next_incremental_run_to_sweep(
    conn: psycopg.Connection, capture: ChangeCapture, test_env: Isolated
) -> None:
    assert capture.status().truncated_at is None
    _run(conn, test_env.settings.table, "TRUNCATE {table}")
    assert capture.status().truncated_at is not None


def test_a_claim_takes_only_committed_changes_and_a_later_claim_gets_the_rest(
    conn: psycopg.Connection, capture: ChangeCapture, test_env: Isolated
) -> None:
    table = test_env.settings.table
    _run(conn, table, "UPDATE {table} SET name = 'committed' WHERE id = (SELECT min(id) FROM {table})")
    committed = _recorded(conn, table)
    with psycopg.connect(test_env.env["DATABASE_URL"]) as other:  # a transaction left open
        _run(other, table, "INSERT INTO {table} (id, ndc, name) VALUES (900001, 'n', 'in flight')")
        first = capture.claim(uuid.uuid4())
        other.commit()
    second = capture.claim(uuid.uuid4())

    assert first == committed
    assert second == sorted({*committed, 900001})  # the first run did not complete: its rows come again


def test_a_finished_capture_run_releases_its_changes_but_those_still_failing(
    conn: psycopg.Connection, db: Database, capture: ChangeCapture, test_env: Isolated
) -> None:
    table = test_env.settings.table
    _run(conn, table, "INSERT INTO {table} (id, ndc, name) VALUES (900001, 'n', 'a'), (900002, 'n', 'b')")
    ledger = PostgresLedger(db)
    ledger.ensure_schema()
    run_id = uuid.uuid4()
    ids = capture.claim(run_id)
    ledger.start_run(run_id, 2, None, [PlannedRange(ids[0], ids[-1], 2)], mode="incremental",
                     source_table=table, changes_source="capture", swept=True)  # fmt: skip
    ledger.record_failures(run_id, [RowFailure(900002, "RowError", "bad")])
    _run(
        conn, table, "UPDATE {table} SET name = 'during the run' WHERE id = 900001"
    )  # a change after the claim

    assert not ledger.finish_run(run_id)  # its range is not done: nothing released
    assert sorted(_recorded(conn, table)) == [900001, 900001, 900002]
    ledger.mark_range_done(run_id, ids[0], 1)
    assert ledger.finish_run(run_id)

    # The failed id and the change made during the run wait for the next run; the synced one is gone.
    assert sorted(_recorded(conn, table)) == [900001, 900002]
    assert capture.claim(uuid.uuid4()) == [900001, 900002]


def test_a_run_not_recorded_as_a_capture_run_releases_nothing(
    conn: psycopg.Connection, db: Database, capture: ChangeCapture, test_env: Isolated
) -> None:
    table = test_env.settings.table
    _run(conn, table, "INSERT INTO {table} (id, ndc, name) VALUES (900001, 'n', 'a')")
    ledger = PostgresLedger(db)
    ledger.ensure_schema()
    run_id = uuid.uuid4()
    capture.claim(run_id)
    ledger.start_run(run_id, 1, None, [], mode="incremental", source_table=table,
                     changes_source="watermark", swept=True)  # fmt: skip
    assert ledger.finish_run(run_id)
    assert _recorded(conn, table) == [900001]


def test_install_gives_up_on_a_lock_held_by_a_long_transaction_and_changes_nothing(
    db: Database, conn: psycopg.Connection, test_env: Isolated
) -> None:
    seed_drugs(conn, test_env.settings, 5)
    capture = ChangeCapture(db, test_env.settings.table_parts, "id", "eligible")
    table = test_env.settings.table
    conn.execute("SET statement_timeout = '10s'")  # were the lock timeout not set, fail instead of hanging
    with psycopg.connect(test_env.env["DATABASE_URL"]) as writer:  # holds ROW EXCLUSIVE until it ends
        _run(writer, table, "UPDATE {table} SET name = 'long' WHERE id = (SELECT min(id) FROM {table})")
        with pytest.raises(CaptureBusy, match="nothing was changed"):
            capture.install(lock_timeout_seconds=0.2)
        writer.rollback()
    assert capture.status().triggers == 0


def test_the_watermark_reads_rows_written_since_eligible_or_not(
    conn: psycopg.Connection, db: Database, test_env: Isolated
) -> None:
    seed_drugs(conn, test_env.settings, 20)
    table = test_env.settings.table
    capture = ChangeCapture(db, test_env.settings.table_parts, "id", "eligible")
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = [row[0] for row in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id LIMIT 2").format(
        sql.Identifier(table)))]  # fmt: skip
    _run(conn, table, "UPDATE {table} SET name = 'x', updated_at = now() WHERE id = %s", ids[1])
    _run(conn, table, "UPDATE {table} SET eligible = false, updated_at = now() WHERE id = %s", ids[0])

    assert capture.changed_since(since) == sorted(ids)


def test_install_again_keeps_the_start_of_an_intact_capture_and_restarts_a_broken_one(
    conn: psycopg.Connection, capture: ChangeCapture, test_env: Isolated
) -> None:
    began = capture.status().installed_at
    assert capture.install().installed_at == began  # nothing missed: incremental runs still build on it

    _run(conn, test_env.settings.table, "DROP TRIGGER drugsync_capture_update ON {table}")
    restarted = capture.install().installed_at  # changes may have been missed: a full run must follow
    assert began is not None
    assert restarted is not None
    assert restarted > began


EMBEDDER = "hashing-32"


@pytest.fixture
def services(test_env: Isolated) -> Iterator[Services]:
    """Catalog, ledger and capture on one connection, as the producer builds them."""
    built = Services(test_env.settings)
    seed_drugs(built.conn, test_env.settings, 20)
    built.ledger.ensure_schema()
    yield built
    built.close()


def _incremental(services: Services, queue: FakeQueue | None = None, overlap: float = 600.0) -> SyncSummary:
    generations = FakeGenerations(FakeStore())
    generations.switch(generations.begin(EMBEDDER, 32, "the base run").number)
    return start_sync(
        SyncRequest(mode="incremental"), catalog=services.catalog, ledger=services.ledger,
        queue=queue or FakeQueue(), generations=generations, embedder_name=EMBEDDER, embedding_dim=32,
        default_range_size=100, changes=services.capture, overlap_seconds=overlap,
    )  # fmt: skip


def _sent_ids(queue: FakeQueue) -> list[int]:
    return [i for body in queue.bodies if isinstance(m := parse_message(body), ChangesMessage) for i in m.ids]


def _some_ids(services: Services) -> list[int]:
    query = sql.SQL("SELECT id FROM {} ORDER BY id LIMIT 2").format(
        sql.Identifier(*services.settings.table_parts)
    )
    return [row[0] for row in services.conn.execute(query)]


def _complete(ledger: PostgresLedger, run_id: uuid.UUID) -> None:
    for planned in ledger.undone_ranges(run_id):
        ledger.mark_range_done(run_id, planned.first_id, planned.drug_count)
    ledger.mark_swept(run_id)
    assert ledger.finish_run(run_id)


def _complete_full_run(services: Services, failing: tuple[int, ...] = ()) -> uuid.UUID:
    run_id = uuid.uuid4()
    services.ledger.start_run(run_id, 10, None, [], source_table=services.catalog.table_name, swept=True)
    services.ledger.record_failures(run_id, [RowFailure(i, "RowError", "bad") for i in failing])
    _complete(services.ledger, run_id)
    return run_id


def _claims(services: Services) -> list[tuple[int, uuid.UUID | None]]:
    rows = services.conn.execute(
        "SELECT drug_id, run_id FROM drugsync_changes WHERE source_table = %s ORDER BY seq",
        [services.capture.source_table],
    )
    return [(row[0], row[1]) for row in rows.fetchall()]


def test_an_incremental_run_refused_by_the_active_run_takes_none_of_its_changes(
    services: Services, test_env: Isolated
) -> None:
    services.capture.install()
    _complete_full_run(services)
    table = test_env.settings.table
    _run(services.conn, table, "INSERT INTO {table} (id, ndc, name) VALUES (900001, 'n', 'a')")
    active = _incremental(services).run_id
    _run(services.conn, table, "INSERT INTO {table} (id, ndc, name) VALUES (900002, 'n', 'b')")

    with pytest.raises(RunActive, match=str(active)):
        _incremental(services)

    assert _claims(services) == [(900001, active), (900002, None)]


def test_a_start_that_fails_after_claiming_changes_leaves_them_unclaimed(services: Services) -> None:
    services.capture.install()
    _run(
        services.conn, services.catalog.table_name, "INSERT INTO {table} (id, ndc, name) VALUES (9, 'n', 'a')"
    )
    run_id = uuid.uuid4()

    def plan() -> list[PlannedRange]:
        assert services.capture.claim(run_id) == [9]  # claimed in the run's transaction ...
        raise ConfigError("the run could not be planned")

    with pytest.raises(ConfigError):
        services.ledger.start_run(run_id, 1, None, [], mode="incremental", plan=plan,
                                  source_table=services.catalog.table_name)  # fmt: skip
    assert _claims(services) == [(9, None)]  # ... so it went with the run's record
    assert services.ledger.progress(run_id) is None


def test_a_capture_run_tries_again_the_rows_still_failing_in_its_full_base_run(services: Services) -> None:
    services.capture.install()
    edited, failing = _some_ids(services)
    _complete_full_run(services, failing=(failing,))  # its failure is in no change table
    _run(services.conn, services.catalog.table_name, "UPDATE {table} SET name = 'x' WHERE id = %s", edited)
    queue = FakeQueue()

    assert _incremental(services, queue).changes_source == "capture"
    assert _sent_ids(queue) == [edited, failing]


def test_a_row_committed_just_after_a_watermark_run_read_its_changes_is_read_by_the_next_run(
    services: Services, test_env: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = services.catalog.table_name
    late = _some_ids(services)[0]
    _complete_full_run(services)
    read = services.capture.changed_since

    def read_then_a_writer_commits(since: datetime) -> list[int]:
        found = read(since)
        with psycopg.connect(test_env.env["DATABASE_URL"], autocommit=True) as writer:
            _run(writer, table, "UPDATE {table} SET name = 'late', updated_at = now() WHERE id = %s", late)
        return found

    monkeypatch.setattr(services.capture, "changed_since", read_then_a_writer_commits)
    queue = FakeQueue()
    first = _incremental(services, queue, overlap=0.0)
    assert _sent_ids(queue) == []  # the seeded rows are older than the full run; the late one unseen
    _complete(services.ledger, first.run_id)
    monkeypatch.undo()

    queue = FakeQueue()
    _incremental(services, queue, overlap=0.0)  # no overlap to hide a gap behind

    assert _sent_ids(queue) == [late]
