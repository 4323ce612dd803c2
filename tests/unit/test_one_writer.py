"""One writer at a time, superseded runs' messages dropped, and skipped drugs counted once per range."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from console.status import StatusReport, describe_run, render_runs, render_status, run_state
from console.watch import watch_outcome
from consumer import handler
from producer.handler import parse_request
from producer.plan import resume_run, start_sync
from shared.errors import ConfigError, RunActive
from shared.models import RangeMessage, SweepMessage, SyncRequest, SyncSummary
from shared.ports import RunProgress
from shared.queue import QueueDepth
from shared.settings import Settings, get_settings
from tests.factories import lambda_context, range_body, sqs_event
from tests.fakes import FakeGenerations, FakeQueue, RecordingTelemetry
from tests.unit.test_consumer_handler import emitted_metrics
from tests.unit.test_sync_range import RUN, World


def start(world: World, **request: object) -> SyncSummary:
    return start_sync(
        SyncRequest.model_validate(request), catalog=world.catalog, ledger=world.ledger,
        queue=world.work_queue, generations=FakeGenerations(world.store), embedder_name="hashing-32",
        embedding_dim=32, default_range_size=10,
    )  # fmt: skip


def test_a_second_run_is_refused_while_one_is_active_naming_it_and_leaving_nothing_behind() -> None:
    # GIVEN RUN is recorded and not finished
    world = World(count=25)
    runs_before = set(world.ledger.runs)

    # WHEN another full run is asked for
    with pytest.raises(RunActive, match=str(RUN)):
        start(world)

    # THEN nothing is recorded or sent
    assert set(world.ledger.runs) == runs_before
    assert world.work_queue.bodies == []


def test_supersede_takes_over_and_the_old_run_is_shown_superseded() -> None:
    world = World(count=25)

    summary = start(world, supersede=True)

    assert summary.superseded == [RUN]
    old = world.ledger.progress(RUN)
    assert old is not None
    assert (old.state, old.active) == ("superseded", False)
    new = world.ledger.progress(summary.run_id)
    assert new is not None
    assert new.active


def test_a_run_that_showed_no_life_for_the_claim_is_superseded_by_the_next_without_asking() -> None:
    world = World(count=25)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    world.ledger.runs[RUN]["started"] = long_ago  # a crashed run: nothing happened since
    with pytest.raises(RunActive):  # a claim of 3 hours still holds
        start_sync(SyncRequest(), catalog=world.catalog, ledger=world.ledger, queue=world.work_queue,
                   generations=FakeGenerations(world.store), embedder_name="hashing-32", embedding_dim=32,
                   default_range_size=10, claim_seconds=3 * 3600)  # fmt: skip

    summary = start(world)  # the default claim, one hour, has lapsed

    assert summary.superseded == [RUN]


def test_a_heartbeat_keeps_a_quiet_run_claimed() -> None:
    world = World(count=25)
    world.ledger.runs[RUN]["started"] = datetime.now(UTC) - timedelta(hours=2)
    world.run(SweepMessage(run_id=RUN))  # any message of the run touches it (a sweep not due yet)

    with pytest.raises(RunActive):
        start(world)


def test_a_superseded_runs_messages_are_dropped_without_writing_or_failing() -> None:
    # GIVEN RUN was superseded before its range was synced
    world = World(count=25)
    telemetry = RecordingTelemetry()
    world.env.telemetry = telemetry
    start(world, supersede=True)
    continuation = RangeMessage(run_id=RUN, first_id=11, last_id=25, expected_count=15, range_first_id=1)

    # WHEN its range, a continuation and its sweep arrive
    outcomes = [world.run(), world.run(continuation), world.run(SweepMessage(run_id=RUN))]

    # THEN nothing is embedded, written, failed, marked done or sent on
    assert [outcome.dropped for outcome in outcomes] == [True, True, True]
    assert (world.embedder.calls, world.store.documents, world.dead_letters.bodies) == (0, {}, [])
    assert (RUN, 1) not in world.ledger.done
    assert telemetry.counts["MessagesDropped"] == 3
    assert len(world.work_queue.bodies) == 3  # only the new run's three ranges


def test_a_superseded_run_never_sweeps_finishes_or_is_announced() -> None:
    # GIVEN RUN's range was synced (in flight when the supersede landed), then RUN was superseded
    world = World(count=25)
    world.ledger.runs[RUN]["superseded"] = None
    world.run()
    sent = len(world.work_queue.bodies)  # its sweep, asked for as its last range was done
    world.ledger.supersede_all()

    world.run()  # a redelivery of that range takes the run no further: no sweep, no finish
    assert world.ledger.claim_sweep(RUN, 0) is False
    assert world.ledger.finishes == 0
    assert len(world.work_queue.bodies) == sent


def test_resuming_a_superseded_run_is_refused_naming_the_run_that_took_over() -> None:
    world = World(count=25)
    summary = start(world, supersede=True)

    with pytest.raises(ConfigError, match=f"superseded by run {summary.run_id}"):
        resume_run(RUN, ledger=world.ledger, queue=FakeQueue())


def test_skipped_drugs_are_counted_once_per_range_through_continuations_and_redeliveries() -> None:
    # GIVEN a first run wrote all 100 drugs, then the odd ones changed: a second full run finds half current
    world = World(count=100, chunk_size=10, seconds_per_text=0.1)
    world.drain(seconds=1000)
    for drug_id in range(1, 101, 2):
        world.catalog.drugs[drug_id] = world.catalog.drugs[drug_id].model_copy(update={"route": "topical"})
    second = start(world)
    first_messages = [RangeMessage.model_validate_json(body) for body in world.work_queue.bodies[-10:]]

    # WHEN each of its ranges is synced with too little time for one message (continuations), and
    # the message that completes the first range is delivered twice
    for message in first_messages:
        world.drain(seconds=1.3, first=message)
    world.run(first_messages[0])

    # THEN the run counts 50 skipped drugs: each range's chain once, the redelivery not at all
    progress = world.ledger.progress(second.run_id)
    assert progress is not None
    assert (progress.drugs_skipped, progress.ranges_done, progress.state) == (50, 10, "complete")
    assert any(RangeMessage.model_validate_json(b).drugs_skipped for b in world.work_queue.bodies
               if '"kind":"range"' in b)  # fmt: skip


def test_a_claim_shorter_than_a_consumer_timeout_plus_a_deferral_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("DRUGSYNC_RUN_CLAIM_SECONDS", "600")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="run_claim_seconds 600 must exceed"):
            get_settings()
    finally:
        get_settings.cache_clear()
    assert Settings(run_claim_seconds=1021, consumer_timeout_seconds=120).run_claim_seconds == 1021


def test_a_dropped_message_is_logged_and_counted_not_failed(monkeypatch, capsys, caplog) -> None:
    world = World(count=10)
    start(world, supersede=True)
    consumer = handler.Consumer(
        settings=Settings(), catalog=world.catalog, ledger=world.ledger, store=world.store,
        embedder=world.embedder, work_queue=world.work_queue, dead_letters=world.dead_letters,
    )  # fmt: skip
    monkeypatch.setattr(handler, "_consumer", lambda: consumer)

    response = handler.lambda_handler(sqs_event(range_body(RUN, 1, 10, 10)), lambda_context())

    assert response == {"batchItemFailures": []}  # not retried, not dead-lettered
    assert "message dropped: its run was superseded" in caplog.text
    assert emitted_metrics(capsys.readouterr().out)["MessagesDropped"] == 1
    assert world.store.documents == {}


NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_status_and_runs_show_the_mode_skipped_drugs_and_a_superseded_run() -> None:
    skipped = RunProgress(uuid.uuid4(), NOW, 10, 100, 10, 10, 100, NOW, finished_at=NOW, drugs_skipped=97)
    superseded = RunProgress(uuid.uuid4(), NOW, 10, 100, 10, 2, 20, NOW, superseded_at=NOW)
    quiet = NOW + timedelta(hours=2)

    assert run_state(superseded, QueueDepth(0, 0, 0), quiet) == "superseded"  # not "stalled"
    described = describe_run(skipped, quiet)
    assert (described["mode"], described["drugs_skipped"]) == ("full", 97)
    text = render_status(StatusReport(described, None, None, None))
    assert "97 of them already current: neither embedded nor written" in text
    table = render_runs([described, describe_run(superseded, quiet)])
    assert "superseded" in table
    assert "its messages are dropped" in table
    assert table.splitlines()[1].split()[-2:] == ["97", "0"]


def test_the_scheduled_event_is_a_request_of_mode_incremental_and_a_wrong_mode_is_named() -> None:
    assert parse_request({"mode": "incremental"}) == SyncRequest(mode="incremental")
    with pytest.raises(ConfigError, match="invalid producer event: mode"):
        parse_request({"mode": "daily"})


def test_watching_a_superseded_run_ends_with_exit_1() -> None:
    superseded = RunProgress(uuid.uuid4(), NOW, 10, 100, 10, 2, 20, NOW, superseded_at=NOW)
    report = StatusReport(describe_run(superseded, NOW), QueueDepth(0, 0, 0), None, None)
    assert watch_outcome(report) == 1
