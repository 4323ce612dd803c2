"""The run's sweep against the real PostgreSQL and Redis Stack: what no longer qualifies goes."""

import uuid

import pytest
from psycopg import sql

from console.seed import seed_drugs
from console.services import Services
from console.verify import verify
from consumer.env import SyncEnv
from consumer.sync import sync_message
from shared.ledger import PostgresLedger
from shared.models import BIGINT_MAX, BIGINT_MIN, PlannedRange, SweepMessage
from shared.retry import RetryPolicy
from tests.conftest import Isolated
from tests.fakes import FakeClock, FakeDeadline, FakeQueue

pytestmark = pytest.mark.integration
EXTREMES = [BIGINT_MIN, -5, 0, 7, 3_000_000_000, BIGINT_MAX]


@pytest.fixture
def services(test_env: Isolated):
    built = Services(test_env.settings)
    yield built
    built.close()


def _insert(services: Services, ids: list[int], eligible: bool = True) -> None:
    table = sql.Identifier(*services.settings.table_parts)
    for drug_id in ids:
        services.conn.execute(
            sql.SQL("INSERT INTO {} (id, ndc, name, eligible) VALUES (%s, %s, %s, %s)").format(table),
            [drug_id, f"ndc-{drug_id}", f"Drug {drug_id} 5 mg tablet", eligible],
        )


def _plant(services: Services, *keys: str) -> None:
    for key in keys:
        services.store._client.execute_command(  # type: ignore[no-untyped-call]
            "JSON.SET", key, "$", '{"id": 1, "name": "planted", "fingerprint": "x"}'
        )


def test_keys_drugsync_never_writes_are_neither_ids_nor_a_crash(services: Services) -> None:
    prefix = services.settings.key_prefix
    seed_drugs(services.conn, services.settings, 0)
    _plant(services, *(f"{prefix}{i}" for i in EXTREMES), f"{prefix}abc", f"{prefix}007", f"{prefix}-0",
           f"{prefix}{BIGINT_MAX + 1}", f"{prefix}1:2")  # fmt: skip

    found: list[int] = []
    cursor = 0
    while True:
        cursor, ids = services.store.scan_ids(cursor, 2)
        found += ids
        if cursor == 0:
            break

    assert sorted(set(found)) == EXTREMES
    report = verify(services.catalog, services.store, services.embedder.name)  # no ValueError
    assert sorted(report.drift.extra) == EXTREMES


def test_a_sweep_removes_exactly_what_no_longer_qualifies_and_finishes_the_run(services: Services) -> None:
    # GIVEN rows across the whole bigint range, documents for each, then deletions and an ineligible row
    seed_drugs(services.conn, services.settings, 0)
    _insert(services, EXTREMES)
    _insert(services, [11], eligible=False)
    prefix = services.settings.key_prefix
    _plant(services, *(f"{prefix}{i}" for i in [*EXTREMES, 11, 12]), f"{prefix}notadrug")
    table = sql.Identifier(*services.settings.table_parts)
    services.conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (-5, 3000000000)").format(table))
    ledger = PostgresLedger(services.db)
    ledger.ensure_schema()
    run_id = uuid.uuid4()
    ledger.start_run(run_id, 10, None, [PlannedRange(BIGINT_MIN, BIGINT_MAX, 4)])
    ledger.mark_range_done(run_id, BIGINT_MIN, 4)
    env = SyncEnv(
        catalog=services.catalog, embedder=services.embedder, store=services.store, ledger=ledger,
        work_queue=FakeQueue(), dead_letters=FakeQueue(), retry=RetryPolicy(budget_seconds=5),
        chunk_size=10, margin_seconds=0, seconds_per_drug=0.01, sweep_page_size=2,
    )  # fmt: skip

    outcome = sync_message(SweepMessage(run_id=run_id), env, FakeDeadline(FakeClock(), 60))

    remaining = sorted(
        int(k.decode()[len(prefix) :]) for k in services.store._client.scan_iter(f"{prefix}*[0-9]")
    )
    assert remaining == [BIGINT_MIN, 0, 7, BIGINT_MAX]
    assert services.store._client.exists(f"{prefix}notadrug")  # not ours: never touched
    assert outcome.documents_removed == 4
    progress = ledger.progress(run_id)
    assert progress is not None
    assert (progress.state, progress.documents_removed) == ("complete", 4)
