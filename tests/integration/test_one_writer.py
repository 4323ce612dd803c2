"""One writer at a time, on the real PostgreSQL (the claim) and Redis Stack (what a dropped message writes)."""

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from console.seed import seed_drugs
from console.services import Services
from console.status import advice, describe_run
from consumer.env import SyncEnv
from consumer.sync import sync_message
from producer.plan import resume_run, start_sync
from shared.errors import ConfigError, RunActive, UnavailableError
from shared.ledger import PostgresLedger
from shared.models import Generation, PlannedRange, RangeMessage, SweepMessage, SyncRequest
from shared.postgres import Database
from shared.retry import RetryPolicy
from tests.conftest import Isolated
from tests.fakes import FakeClock, FakeDeadline, FakeGenerations, FakeQueue, RecordingTelemetry

pytestmark = pytest.mark.integration
RANGES = [PlannedRange(1, 10, 10), PlannedRange(11, 20, 10)]


@pytest.fixture
def services(test_env: Isolated) -> Iterator[Services]:
    built = Services(test_env.settings)
    built.ledger.ensure_schema()
    yield built
    built.close()


def started(ledger: PostgresLedger, **claim: object) -> uuid.UUID:
    run_id = uuid.uuid4()
    ledger.start_run(run_id, 10, None, RANGES, **claim)  # type: ignore[arg-type]
    return run_id


def test_of_two_runs_started_at_once_on_two_connections_exactly_one_is_recorded(
    services: Services, test_env: Isolated
) -> None:
    # GIVEN no run is active, and two producers (each its own connection) start a run at the same moment
    barrier = threading.Barrier(2)
    won: list[uuid.UUID] = []
    refused: list[str] = []

    def producer() -> None:
        own = Database(test_env.env["DATABASE_URL"])
        try:
            barrier.wait()
            won.append(started(PostgresLedger(own)))
        except RunActive as error:
            refused.append(str(error))
        finally:
            own.close()

    threads = [threading.Thread(target=producer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # THEN one is recorded and active, the other refused naming it
    assert len(won) == 1
    assert len(refused) == 1
    assert str(won[0]) in refused[0]
    assert "--supersede" in refused[0]
    progress = services.ledger.progress(won[0])
    assert progress is not None
    assert progress.active


def test_a_refused_run_leaves_nothing_in_the_ledger(services: Services) -> None:
    first = started(services.ledger)
    refused = uuid.uuid4()
    with pytest.raises(RunActive, match=f"run {first} \\(full, started "):
        services.ledger.start_run(refused, 10, None, RANGES)
    assert services.ledger.progress(refused) is None
    assert services.ledger.range_state(refused, 1) is None


def test_a_claim_expires_after_its_seconds_without_activity_and_the_next_run_supersedes_it(
    services: Services,
) -> None:
    # GIVEN a run that crashed two hours ago: started, one range done, then nothing
    crashed = started(services.ledger)
    services.ledger.mark_range_done(crashed, 1, 10)
    services.conn.execute(
        "UPDATE drugsync_runs SET started_at = now() - interval '3 hours' WHERE run_id = %s", [crashed]
    )
    services.conn.execute(
        "UPDATE drugsync_ranges SET done_at = now() - interval '2 hours' WHERE run_id = %s", [crashed]
    )
    with pytest.raises(RunActive):  # a claim of three hours still holds
        started(services.ledger, claim_seconds=3 * 3600)

    # WHEN a run starts with a claim of one hour
    successor = uuid.uuid4()
    superseded = services.ledger.start_run(successor, 10, None, RANGES, claim_seconds=3600)

    # THEN the crashed run is superseded, by it
    assert superseded == [crashed]
    row = services.conn.execute(
        "SELECT superseded_by FROM drugsync_runs WHERE run_id = %s", [crashed]
    ).fetchone()
    assert row == (successor,)
    progress = services.ledger.progress(crashed)
    assert progress is not None
    assert progress.state == "superseded"


def test_a_heartbeat_renews_the_claim_of_a_quiet_run(services: Services) -> None:
    quiet = started(services.ledger)
    services.conn.execute(
        "UPDATE drugsync_runs SET started_at = now() - interval '3 hours' WHERE run_id = %s", [quiet]
    )
    touched = services.ledger.touch_run(quiet)  # a message of the run arrives
    assert touched is not None
    assert (touched.mode, touched.superseded) == ("full", False)

    with pytest.raises(RunActive):
        started(services.ledger, claim_seconds=3600)


def test_supersede_takes_the_claim_and_the_superseded_run_never_sweeps_or_finishes(
    services: Services,
) -> None:
    old = started(services.ledger)
    new = uuid.uuid4()

    assert services.ledger.start_run(new, 10, None, RANGES, supersede=True) == [old]

    touched = services.ledger.touch_run(old)
    assert touched is not None
    assert (touched.superseded, touched.superseded_by) == (True, new)
    # its last messages, in flight when the supersede landed, may still mark its ranges done ...
    assert services.ledger.mark_range_done(old, 1, 10, 4)
    assert services.ledger.mark_range_done(old, 11, 10, 6)
    # ... but the run asks for no sweep and never finishes: the new run owns the end
    assert services.ledger.claim_sweep(old, lease_seconds=0) is False
    services.ledger.mark_swept(old)
    assert services.ledger.finish_run(old) is False
    progress = services.ledger.progress(old)
    assert progress is not None
    assert (progress.state, progress.drugs_skipped) == ("superseded", 10)


def test_a_ranges_skipped_drugs_count_once_with_its_first_completion(services: Services) -> None:
    run_id = started(services.ledger)

    assert services.ledger.mark_range_done(run_id, 1, 10, 7)
    assert not services.ledger.mark_range_done(run_id, 1, 10, 10)  # a redelivery, counting differently
    assert services.ledger.mark_range_done(run_id, 11, 10, 3)

    progress = services.ledger.progress(run_id)
    assert progress is not None
    assert (progress.drugs_skipped, progress.drugs_done) == (10, 20)


def test_a_superseded_runs_messages_are_dropped_by_the_consumer_and_write_nothing(
    services: Services,
) -> None:
    # GIVEN a seeded catalog, a run A enqueued, then a run B that supersedes it
    seed_drugs(services.conn, services.settings, 200)
    first = services.producer.start(SyncRequest(range_size=100))
    second = services.producer.start(SyncRequest(range_size=100, supersede=True))
    assert second.superseded == [first.run_id]
    telemetry = RecordingTelemetry()
    env = SyncEnv(
        catalog=services.catalog, embedder=services.embedder, store=services.store, ledger=services.ledger,
        work_queue=FakeQueue(), dead_letters=FakeQueue(), retry=RetryPolicy(budget_seconds=5),
        chunk_size=50, margin_seconds=0, seconds_per_drug=0.01, telemetry=telemetry,
    )  # fmt: skip
    planned = services.ledger.undone_ranges(first.run_id)

    # WHEN A's range messages and its sweep reach a consumer
    outcomes = [
        sync_message(RangeMessage.for_range(first.run_id, r), env, FakeDeadline(FakeClock(), 60))
        for r in planned
    ]
    outcomes.append(sync_message(SweepMessage(run_id=first.run_id), env, FakeDeadline(FakeClock(), 60)))

    # THEN Redis holds nothing, A's ledger is untouched, and each message was dropped, not failed
    assert services.store.count_documents() == 0
    assert all(outcome.dropped for outcome in outcomes)
    assert telemetry.counts["MessagesDropped"] == len(planned) + 1
    assert env.work_queue.bodies == []  # type: ignore[attr-defined]
    assert env.dead_letters.bodies == []  # type: ignore[attr-defined]
    progress = services.ledger.progress(first.run_id)
    assert progress is not None
    assert (progress.state, progress.ranges_done) == ("superseded", 0)

    # AND B's messages write every drug
    for r in services.ledger.undone_ranges(second.run_id):
        sync_message(RangeMessage.for_range(second.run_id, r), env, FakeDeadline(FakeClock(), 60))
    assert services.store.count_documents() == services.catalog.count_eligible()


class UnopenableGenerations(FakeGenerations):
    """Redis refuses to create the new generation's index."""

    def begin(self, embedder: str, dimension: int, run_id: str) -> Generation:
        raise UnavailableError("FT.CREATE refused: out of memory")


def test_a_full_run_whose_generation_could_not_be_opened_is_not_resumed_into_no_index(
    services: Services,
) -> None:
    # GIVEN a full run recorded (with the claim) whose generation Redis refused to begin
    seed_drugs(services.conn, services.settings, 50)
    with pytest.raises(UnavailableError):
        start_sync(
            SyncRequest(range_size=100), catalog=services.catalog, ledger=services.ledger, queue=FakeQueue(),
            generations=UnopenableGenerations(), embedder_name="hashing-32", embedding_dim=32,
            default_range_size=100,
        )  # fmt: skip
    row = services.conn.execute(
        "SELECT run_id FROM drugsync_runs WHERE source_table = %s", [services.catalog.table_name]
    ).fetchone()
    assert row is not None
    progress = services.ledger.progress(row[0])
    assert progress is not None
    assert (progress.state, progress.generation) == ("enqueue_failed", None)

    # WHEN an operator resumes it, THEN it is refused and nothing is sent; status advises a new run
    queue = FakeQueue()
    with pytest.raises(ConfigError, match=r"no generation to write .*cannot be resumed.*sync --supersede"):
        resume_run(row[0], ledger=services.ledger, queue=queue)
    assert queue.bodies == []
    assert "sync --supersede" in (advice(describe_run(progress, datetime.now(UTC))) or "")

    # AND it does not hold the table's claim: the next run starts without asking, and supersedes it
    superseded = services.ledger.start_run(
        uuid.uuid4(), 100, None, RANGES, source_table=services.catalog.table_name
    )
    assert superseded == [row[0]]


def test_a_full_run_recorded_before_generations_is_still_resumed(services: Services) -> None:
    legacy = started(services.ledger)  # no source table, no generation: as v3's migration leaves a v2 run
    queue = FakeQueue()
    assert resume_run(legacy, ledger=services.ledger, queue=queue) == len(RANGES)


def test_the_claim_is_per_source_table_a_run_of_another_catalog_neither_waits_nor_supersedes(
    services: Services,
) -> None:
    # GIVEN a run of one catalog active
    first = started(services.ledger, source_table="drugs_one")

    # WHEN a run of another catalog in the same database starts, THEN it is recorded beside it,
    # superseding nothing; a second run of the first catalog is still refused
    assert services.ledger.start_run(uuid.uuid4(), 10, None, RANGES, source_table="drugs_two") == []
    with pytest.raises(RunActive, match=str(first)):
        started(services.ledger, source_table="drugs_one")
    progress = services.ledger.progress(first)
    assert progress is not None
    assert progress.superseded_at is None
