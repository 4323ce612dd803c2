"""Fault injection against the real embedded servers: after recovery nothing is lost.

Each scenario seeds its own table, starts a run, consumes it through the local event source while
a fault is injected, recovers (redriving where the scenario needs it) and then checks Redis
against Postgres by ids and content fingerprints, and the index by its document count.
"""

import json
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
import redis
from psycopg import sql

from console import local_stack
from console.dead_letters import list_dead_letters, redrive
from console.event_source import EventSourceConfig, LocalEventSource, WorkStats
from console.local_stack import StackState
from console.seed import seed_drugs
from console.services import Services
from console.verify import VerifyReport, verify
from consumer.handler import build_consumer
from producer.plan import cover_id_space, run_messages
from shared.errors import ConfigError
from shared.models import RowsMessage, SyncRequest
from shared.retry import RetryPolicy
from tests.conftest import Isolated, isolate
from tests.faults.conftest import REPORT, FaultRow
from tests.faults.handlers import ACCESS_DENIED_CALLS, fault_counter
from tests.store_cases import out_of_memory, read_only, refused

pytestmark = [pytest.mark.integration, pytest.mark.faults]
DRUGS = 1200
RANGE_SIZE = 100
HANDLERS = "tests.faults.handlers"


class Scenario:
    """One isolated table, index and queue pair, a run over it, and the tools to disturb it."""

    def __init__(self, env: Isolated, sqs: Any) -> None:
        self.env = env
        self.sqs = sqs
        self.services = Services(env.settings)
        self.eligible = seed_drugs(self.services.conn, env.settings, DRUGS)
        self.run_id: uuid.UUID | None = None
        # The suite's own connections see the faults too; it retries its reads as the consumer does.
        self.retry = RetryPolicy(budget_seconds=30)

    def start_run(self) -> None:
        self.run_id = self.services.producer.start(SyncRequest(range_size=RANGE_SIZE)).run_id

    def consume(
        self,
        handler: str = "consumer.handler:lambda_handler",
        chaos: Callable[[LocalEventSource], None] | None = None,
        **options: Any,
    ) -> WorkStats:
        config: dict[str, Any] = {"max_concurrency": 2, "wait_seconds": 0, "function_timeout": 30.0}
        config.update(options)
        source = LocalEventSource(
            self.sqs,
            EventSourceConfig(
                queue_url=str(self.env.settings.queue_url), handler=handler, until_empty=True,
                log_path=os.devnull, **config,
            ),
        )  # fmt: skip
        if chaos is None:
            return source.run()
        runner = threading.Thread(target=source.run)
        runner.start()
        try:
            chaos(source)
        finally:
            runner.join(timeout=600)
        return source.stats

    def ranges_done(self) -> int:
        assert self.run_id is not None
        run_id = self.run_id
        progress = self.retry.call(lambda: self.services.ledger.progress(run_id))
        return progress.ranges_done if progress else 0

    def wait_for_ranges(self, count: int, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while self.ranges_done() < count:
            assert time.monotonic() < deadline, f"fewer than {count} ranges done after {seconds}s"
            time.sleep(0.05)

    def state(self) -> str:
        run_id = self.run_id
        assert run_id is not None
        progress = self.retry.call(lambda: self.services.ledger.progress(run_id))
        assert progress is not None
        return progress.state

    def counter(self, name: str) -> int:
        value = redis.Redis.from_url(self.env.env["REDIS_URL"]).get(fault_counter(name))
        return int(value or 0)

    def dead_letters(self) -> list[Any]:
        return list_dead_letters(self.sqs, str(self.env.settings.dlq_url))

    def compare(self) -> VerifyReport:
        """`drugsync verify` on this scenario's table and the generation readers use now."""
        current = self.services.generations.read().current
        store = self.services.store if current is None else self.services.generations.store(current)
        return verify(self.services.catalog, store, self.services.embedder.name)

    def verdict(self, wait_for_index: float = 30) -> VerifyReport:
        deadline = time.monotonic() + wait_for_index
        verdict = self.retry.call(self.compare)
        while not verdict.clean and time.monotonic() < deadline:  # the index catches up asynchronously
            time.sleep(0.2)
            verdict = self.retry.call(self.compare)
        return verdict

    def report(self, fault: str, injected: int, stats: WorkStats, verdict: VerifyReport) -> None:
        REPORT.append(FaultRow(fault, injected, stats.redeliveries, verdict.lost))


def new_scenario(
    stack: StackState, monkeypatch: pytest.MonkeyPatch, sqs: Any, visibility_timeout: int, margin: str = "1"
) -> Scenario:
    env = next(
        isolate(
            stack, monkeypatch, visibility_timeout=visibility_timeout, max_receive_count=5,
            DRUGSYNC_EMBED_BATCH_SIZE="50", DRUGSYNC_HANDOFF_MARGIN_SECONDS=margin,
            DRUGSYNC_RETRY_BUDGET_SECONDS="20",
        )
    )  # fmt: skip
    return Scenario(env, sqs)


@pytest.fixture
def scenario(stack: StackState, monkeypatch: pytest.MonkeyPatch, sqs) -> Iterator[Scenario]:
    built = new_scenario(stack, monkeypatch, sqs, visibility_timeout=3)
    yield built
    built.services.close()


def _busy_worker(source: LocalEventSource, seconds: float = 60) -> int:
    deadline = time.monotonic() + seconds
    while not source.busy_pids():
        if time.monotonic() > deadline:
            pytest.fail(f"no invocation was running within {seconds}s to kill")
        time.sleep(0.005)
    return source.busy_pids()[0]


def _assert_exact(scenario: Scenario, verdict: VerifyReport) -> None:
    assert verdict.drift.missing == []
    assert verdict.drift.extra == []
    assert verdict.drift.stale == []
    assert verdict.postgres_eligible == scenario.eligible
    assert verdict.index_documents == scenario.eligible
    assert scenario.state() == "complete"
    assert scenario.dead_letters() == []


def test_consumer_killed_with_sigkill_mid_range(scenario: Scenario) -> None:
    scenario.start_run()
    kills = []

    def kill_twice(source: LocalEventSource) -> None:
        for ranges in (2, 6):
            scenario.wait_for_ranges(ranges)
            pid = _busy_worker(source)
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)

    # Slow embedding (10 ms a text) keeps invocations running long enough to be killed mid-range.
    stats = scenario.consume(handler=f"{HANDLERS}:slow_handler", chaos=kill_twice)

    verdict = scenario.verdict()
    scenario.report("consumer SIGKILLed mid-range", len(kills), stats, verdict)
    _assert_exact(scenario, verdict)
    assert stats.redeliveries >= 1  # the killed invocations' messages came back from SQS


@pytest.mark.parametrize(
    ("restart_server", "fault"),
    [
        (local_stack.restart_redis, "Redis restarted mid-run"),
        (local_stack.restart_postgres, "Postgres restarted mid-run"),
    ],
)
def test_a_server_restarted_mid_run(
    scenario: Scenario, stack: StackState, restart_server: Callable[[StackState], None], fault: str
) -> None:
    scenario.start_run()

    def restart(source: LocalEventSource) -> None:
        scenario.wait_for_ranges(3)
        restart_server(stack)

    stats = scenario.consume(handler=f"{HANDLERS}:slow_handler", chaos=restart)

    verdict = scenario.verdict()
    scenario.report(fault, 1, stats, verdict)
    _assert_exact(scenario, verdict)


@pytest.mark.parametrize(
    ("window", "code", "fault"),
    [
        (out_of_memory, "OOM", "Redis out of memory (noeviction) for 3 s"),
        (read_only, "READONLY", "Redis READONLY (a failover) for 3 s"),
    ],
)
def test_redis_refusing_writes_for_a_while_is_retried_and_no_row_is_dead_lettered(
    scenario: Scenario, window: Callable[[redis.Redis], AbstractContextManager[None]], code: str, fault: str
) -> None:
    scenario.start_run()
    server = redis.Redis.from_url(scenario.env.env["REDIS_URL"])
    before = refused(server, code)

    def refuse_writes(source: LocalEventSource) -> None:
        scenario.wait_for_ranges(2)
        with window(server):
            time.sleep(3)

    stats = scenario.consume(handler=f"{HANDLERS}:uncounted_slow_handler", chaos=refuse_writes)

    verdict = scenario.verdict()
    scenario.report(fault, 1, stats, verdict)
    assert refused(server, code) > before  # the window did meet the consumers' writes
    _assert_exact(scenario, verdict)


@pytest.mark.parametrize(
    ("handler", "counter", "fault"),
    [
        ("throttling_handler", "throttling", "embedder throttling storm (>50% of calls)"),
        ("server_error_handler", "server_errors", "embedder transient 5xx (1 call in 3)"),
    ],
)
def test_embedder_throttling_and_5xx_never_push_good_work_to_the_dlq(
    scenario: Scenario, handler: str, counter: str, fault: str
) -> None:
    scenario.start_run()

    stats = scenario.consume(handler=f"{HANDLERS}:{handler}")

    verdict = scenario.verdict()
    injected = scenario.counter(counter)
    scenario.report(fault, injected, stats, verdict)
    assert injected >= 8  # a storm: roughly one fault for every two successful calls, or more
    _assert_exact(scenario, verdict)


def _plant_poison(scenario: Scenario) -> list[int]:
    """Two rows Postgres holds but drugsync cannot read, one text the embedding API rejects."""
    table = sql.Identifier(scenario.env.settings.table)
    ids = [row[0] for row in scenario.services.conn.execute(
        sql.SQL("SELECT id FROM {} WHERE eligible ORDER BY id OFFSET 100 LIMIT 3").format(table)
    )]  # fmt: skip
    scenario.services.conn.execute(
        sql.SQL("UPDATE {} SET ndc = '' WHERE id = ANY(%s)").format(table), [ids[:2]]
    )
    scenario.services.conn.execute(
        sql.SQL("UPDATE {} SET description = 'POISON ' || description WHERE id = %s").format(table), [ids[2]]
    )
    return ids


def _fix_poison(scenario: Scenario, ids: list[int]) -> None:
    table = sql.Identifier(scenario.env.settings.table)
    scenario.services.conn.execute(
        sql.SQL("UPDATE {} SET ndc = 'fixed-' || id, description = replace(description, 'POISON ', '')"
                " WHERE id = ANY(%s)").format(table),
        [ids],
    )  # fmt: skip


def test_poison_rows_fail_alone_and_a_redrive_after_the_fix_completes_the_run(scenario: Scenario) -> None:
    poison = _plant_poison(scenario)
    scenario.start_run()

    stats = scenario.consume(handler=f"{HANDLERS}:poison_handler")

    assert scenario.state() == "complete_with_failures"
    dead = scenario.dead_letters()
    dead_ids = sorted(i for letter in dead for i in RowsMessage.model_validate_json(letter.body).ids)
    assert dead_ids == sorted(poison)
    assert {letter.error_class for letter in dead} == {"RowError", "EmbeddingError"}
    assert scenario.compare().drift.missing == sorted(poison)  # every other drug is written

    _fix_poison(scenario, poison)
    moved = redrive(scenario.sqs, str(scenario.env.settings.dlq_url), str(scenario.env.settings.queue_url))
    after = scenario.consume(handler=f"{HANDLERS}:poison_handler")

    verdict = scenario.verdict()
    scenario.report("poison rows (2 broken, 1 rejected by the API)", len(poison), stats, verdict)
    assert moved.moved == len(dead)
    assert after.failed == 0
    _assert_exact(scenario, verdict)


def test_duplicate_and_concurrent_deliveries_change_nothing(scenario: Scenario) -> None:
    scenario.start_run()
    assert scenario.run_id is not None
    planned = cover_id_space(scenario.services.catalog.plan_ranges(RANGE_SIZE, None))  # as the run's
    bodies = run_messages(scenario.run_id, planned)
    scenario.services.queue.send_messages(bodies * 2)  # each range now queued three times

    stats = scenario.consume(max_concurrency=3)

    verdict = scenario.verdict()
    scenario.report("every range delivered 3 times, concurrently", 2 * len(bodies), stats, verdict)
    _assert_exact(scenario, verdict)
    progress = scenario.services.ledger.progress(scenario.run_id)
    assert progress is not None
    assert progress.drugs_done == scenario.eligible
    assert stats.failed == 0
    # every delivery succeeded: the 3n messages, any SQS redelivered after its visibility timeout,
    # and the run's one sweep
    assert stats.succeeded == 3 * len(bodies) + stats.redeliveries + 1


def _malformed(run_id: uuid.UUID) -> dict[str, str]:
    base = {"version": 1, "run_id": str(run_id), "first_id": 1, "last_id": 10, "expected_count": 5}
    return {
        "not JSON": "{first_id: 1",
        "unknown version": json.dumps({**base, "version": 7}),
        "unknown field": json.dumps({**base, "priority": "high"}),
        "missing field": json.dumps({k: v for k, v in base.items() if k != "last_id"}),
        "first id after last id": json.dumps({**base, "first_id": 20}),
        "id beyond bigint": json.dumps({**base, "last_id": 2**63}),
        "more drugs than ids": json.dumps({**base, "expected_count": 11}),
        "unknown run": json.dumps({**base, "run_id": str(uuid.uuid4())}),
        "oversized body": json.dumps({**base, "padding": "x" * 20_000}),
    }


def test_each_kind_of_malformed_message_goes_to_the_dlq_once_with_its_reason(scenario: Scenario) -> None:
    scenario.start_run()
    assert scenario.run_id is not None
    malformed = _malformed(scenario.run_id)
    scenario.services.queue.send_messages(list(malformed.values()))

    stats = scenario.consume(batch_size=5)

    dead = scenario.dead_letters()
    assert sorted(letter.body for letter in dead) == sorted(malformed.values())
    assert {letter.error_class for letter in dead} == {"InvalidMessage"}
    assert all(letter.receive_count == 1 for letter in dead)  # no useless retries
    by_body = {letter.body: letter.reason for letter in dead}
    assert "Invalid JSON" in by_body[malformed["not JSON"]]
    assert "version" in by_body[malformed["unknown version"]]
    assert "priority: Extra inputs" in by_body[malformed["unknown field"]]
    assert "last_id: Field required" in by_body[malformed["missing field"]]
    assert "greater than last_id" in by_body[malformed["first id after last id"]]
    assert (
        "last_id: Input should be less than or equal to 9223372036854775807"
        in by_body[malformed["id beyond bigint"]]
    )
    assert "expected_count 11 exceeds the 10 ids" in by_body[malformed["more drugs than ids"]]
    assert "has no range" in by_body[malformed["unknown run"]]
    assert "exceeds 16,384" in by_body[malformed["oversized body"]]
    verdict = scenario.verdict()
    scenario.report("malformed messages, one of each kind", len(malformed), stats, verdict)
    assert verdict.lost == 0
    assert verdict.drift.clean
    assert scenario.state() == "complete"
    assert stats.failed == 0


def test_a_timeout_far_below_a_range_finishes_by_continuation_without_re_embedding(
    stack: StackState, monkeypatch: pytest.MonkeyPatch, sqs
) -> None:
    # The timeout is at least 1.5 s, and more on a machine slow enough that a first invocation
    # (connect, check the index) would eat it; each range needs 3 timeouts of embedding at 10 ms a
    # drug. The queue's visibility timeout is 6 function timeouts, as AWS advises, so a message is
    # never handed out again while its invocation still runs.
    probe = new_scenario(stack, monkeypatch, sqs, visibility_timeout=60)
    timeout = max(1.5, 1.0 + 4 * measured_first_invocation_seconds(probe))
    probe.services.close()
    scenario = new_scenario(stack, monkeypatch, sqs, math.ceil(6 * timeout), margin="0.5")
    range_size = math.ceil(3 * timeout / 0.01)
    summary = scenario.services.producer.start(SyncRequest(range_size=range_size))
    scenario.run_id = summary.run_id

    stats = scenario.consume(handler=f"{HANDLERS}:slow_handler", function_timeout=timeout)

    verdict = scenario.verdict()
    embedded = scenario.counter("texts_embedded")
    continuations = stats.invocations - summary.ranges
    fault = f"consumer timeout ({timeout:.1f} s) far below a range's {3 * timeout:.1f} s"
    scenario.report(fault, continuations, stats, verdict)
    assert stats.timeouts == 0  # every invocation handed off before Lambda would kill it
    assert stats.invocations >= 3 * summary.ranges  # each range took several invocations
    assert embedded == scenario.eligible  # no finished row was embedded twice
    _assert_exact(scenario, verdict)
    scenario.services.close()


def measured_first_invocation_seconds(scenario: Scenario) -> float:
    """What a cold consumer pays inside its first invocation here: building its clients and
    reading the generations, measured on this machine now (the slowest of three)."""
    times = []
    for _ in range(3):
        began = time.monotonic()
        consumer = build_consumer(scenario.env.settings)
        assert consumer.generations is not None
        consumer.generations.read()  # what its first message of a run reads
        times.append(time.monotonic() - began)
        consumer.close()
    return max(times)


def test_consumer_killed_right_after_marking_the_last_range_done(scenario: Scenario) -> None:
    # GIVEN the consumer that marks the run's last range done is killed before it can take the run further
    scenario.start_run()

    stats = scenario.consume(handler=f"{HANDLERS}:dies_after_last_range_handler")

    # THEN SQS redelivers that message, the already-done range takes the run to its end, announced once
    verdict = scenario.verdict()
    scenario.report(
        "consumer killed right after the last range done", scenario.counter("killed"), stats, verdict
    )
    assert scenario.counter("killed") == 1
    assert stats.redeliveries >= 1
    _assert_exact(scenario, verdict)
    assert scenario.counter("announcements") == 1


def test_bedrock_access_denied_for_a_while_defers_ranges_and_dead_letters_nothing(scenario: Scenario) -> None:
    # GIVEN the account is refused by the embedding provider for the run's first calls
    scenario.start_run()

    stats = scenario.consume(handler=f"{HANDLERS}:access_denied_handler")

    # THEN the ranges it hit were deferred (not their rows isolated) and completed once access came
    verdict = scenario.verdict()
    denied = scenario.counter("access_denied")
    scenario.report("Bedrock AccessDenied for the first 4 calls", denied, stats, verdict)
    assert denied == ACCESS_DENIED_CALLS
    _assert_exact(scenario, verdict)  # nothing in the DLQ
    assert scenario.counter("announcements") == 1


def test_a_foreign_index_under_our_name_is_refused_before_a_run_is_recorded(scenario: Scenario) -> None:
    # GIVEN someone else's index (ON HASH) already holds the name drugsync is configured with
    settings = scenario.env.settings
    client = redis.Redis.from_url(scenario.env.env["REDIS_URL"])
    client.execute_command(  # type: ignore[no-untyped-call]
        "FT.CREATE", settings.index_name, "ON", "HASH", "PREFIX", "1", settings.key_prefix,
        "SCHEMA", "name", "TEXT",
    )  # fmt: skip
    scenario.services.ledger.ensure_schema()
    runs_before = scenario.services.ledger.recent_run_ids(10_000)

    # WHEN a sync starts, THEN it is refused with advice, and no run is left behind
    with pytest.raises(ConfigError, match=r"FT\.DROPINDEX"):
        scenario.start_run()
    assert scenario.services.ledger.recent_run_ids(10_000) == runs_before

    # and once the operator drops it, the run completes
    client.execute_command("FT.DROPINDEX", settings.index_name)  # type: ignore[no-untyped-call]
    scenario.start_run()
    stats = scenario.consume()
    verdict = scenario.verdict()
    scenario.report("a foreign index under our name (refused)", 1, stats, verdict)
    _assert_exact(scenario, verdict)
