"""A consumer under a shared embedding quota: waits it can afford, hands on what it cannot."""

import uuid
from typing import cast

import pytest
import redis

from consumer import handler
from consumer.sync import SyncEnv, sync_message
from shared.embedders.simulated import SimulatedApiEmbedder
from shared.errors import QuotaWaitTooLong
from shared.models import AnyMessage, PlannedRange, RangeMessage, parse_message
from shared.ratelimit import RedisRequestLimiter
from shared.retry import RetryPolicy
from shared.settings import Settings
from tests.factories import lambda_context, range_body, record_calls, sqs_event
from tests.fakes import (
    FakeCatalog,
    FakeClock,
    FakeDeadline,
    FakeLedger,
    FakeQueue,
    FakeQuota,
    FakeStore,
    OneTextApiEmbedder,
    RecordingTelemetry,
    ScriptedRedis,
    make_drug,
)

RUN = uuid.uuid4()
MAX_INVOCATIONS = 100


class QuotaWorld:
    """Drugs 1..count in one range, embedded one text per request under a quota of one request per
    `interval` seconds, by invocations that each bind the quota's wait to their own deadline."""

    def __init__(self, count: int, interval: float, probe: int | None = 4, chunk_size: int = 10) -> None:
        self.clock = FakeClock()
        self.quota = FakeQuota(self.clock, interval)
        self.embedder = OneTextApiEmbedder(32, self.clock, latency=0.05)
        self.embedder.limiter = self.quota
        self.ledger, self.store, self.work_queue = FakeLedger(), FakeStore(), FakeQueue()
        self.telemetry = RecordingTelemetry()
        self.ledger.start_run(RUN, count, None, [PlannedRange(1, count, count)], source_table="drugs")
        self.env = SyncEnv(
            catalog=FakeCatalog([make_drug(i) for i in range(1, count + 1)]), embedder=self.embedder,
            store=self.store, ledger=self.ledger, work_queue=self.work_queue, dead_letters=FakeQueue(),
            retry=RetryPolicy(sleep=self.clock.sleep, clock=self.clock), chunk_size=chunk_size,
            margin_seconds=1.0, seconds_per_drug=0.01, clock=self.clock, telemetry=self.telemetry,
            probe_chunk_size=probe,
        )  # fmt: skip
        self.message = RangeMessage(run_id=RUN, first_id=1, last_id=count, expected_count=count)
        self.overruns = 0

    def run(self, message: AnyMessage, seconds: float):
        deadline = FakeDeadline(self.clock, seconds)
        self.quota.wait_budget = lambda: deadline.remaining_seconds() - self.env.margin_seconds
        outcome = sync_message(message, self.env, deadline)
        self.overruns += deadline.remaining_seconds() < 0
        return outcome

    def drain(self, seconds: float, between=lambda invocation: None) -> list[RangeMessage]:
        """Run the range, then each continuation it leaves (after its delay), until none; returns
        the continuations. `between` runs before each invocation but the first."""
        pending: list[AnyMessage] = [self.message]
        continuations: list[RangeMessage] = []
        invocations = 0
        while pending:
            before = len(self.work_queue.sent)
            self.run(pending.pop(0), seconds)
            invocations += 1
            assert invocations < MAX_INVOCATIONS, "no progress: the range is handed on and on"
            for body, _, delay in self.work_queue.sent[before:]:
                self.clock.sleep(delay)  # SQS shows a delayed message only after its delay
                pending.append(parse_message(body))
            continuations += [m for m in pending if isinstance(m, RangeMessage)]
            between(invocations)
        return continuations


def test_a_quota_wait_beyond_the_invocation_hands_the_rest_on_without_a_deferral() -> None:
    # GIVEN a quota of one request every 2 s, invocations of 10 s, and a range of 30 (about 60 s)
    world = QuotaWorld(count=30, interval=2.0)

    # WHEN after the second invocation other consumers take the next 30 s of the quota
    def others_join(invocations: int) -> None:
        if invocations == 2:
            world.quota.take(15)

    continuations = world.drain(seconds=10.0, between=others_join)

    # THEN the quota's wait was refused and the rest handed on, never deferred, never overrunning
    assert world.telemetry.counts.get("QuotaHandoffs", 0) == 1
    assert {message.deferrals for message in continuations} == {0}
    assert world.overruns == 0
    # AND every drug is written and the range is done
    assert sorted(world.store.documents) == list(range(1, 31))
    assert world.ledger.done == {(RUN, 1): 30}


def test_the_hand_off_waits_about_as_long_as_the_quota_said() -> None:
    world = QuotaWorld(count=10, interval=1.0)
    world.embedder.limiter = Refusing(wait=37.5)

    outcome = world.run(world.message, seconds=100.0)

    assert outcome.continued_at == 1
    assert outcome.deferred is False
    body, _, delay = world.work_queue.sent[0]
    assert delay == 37
    assert RangeMessage.model_validate_json(body).deferrals == 0
    assert world.store.documents == {}


class Refusing:
    def __init__(self, wait: float) -> None:
        self.wait = wait

    def acquire(self, requests: int, tokens: int) -> None:
        raise QuotaWaitTooLong(self.wait, "test")


def test_the_first_chunk_under_a_quota_is_a_probe() -> None:
    world = QuotaWorld(count=30, interval=0.1, probe=4)
    sizes = record_calls(world.embedder)

    world.run(world.message, seconds=100.0)

    assert sizes[0] == 4
    assert sizes[1:] == [10, 10, 6]


def test_a_probe_spares_requests_embedded_in_vain() -> None:
    # GIVEN 10 s invocations and a request every 1.2 s: a first chunk of 10 (12 s) cannot finish
    probed = QuotaWorld(count=40, interval=1.2, probe=4)
    unprobed = QuotaWorld(count=40, interval=1.2, probe=None)

    probed.drain(seconds=10.0)
    message = unprobed.message
    for _ in range(3):  # without a probe every invocation starts a chunk it cannot finish
        unprobed.run(message, seconds=10.0)
        message = RangeMessage.model_validate_json(unprobed.work_queue.bodies[-1])

    assert sorted(probed.store.documents) == list(range(1, 41))
    assert probed.embedder.requests == 40  # one request per drug: none embedded in vain
    assert unprobed.store.documents == {}  # no progress at all: each chunk embedded in vain
    assert unprobed.embedder.requests > 20  # and the quota spent on them


def test_the_handler_lets_quota_waits_take_what_the_invocation_can_spare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a consumer whose API embedder passes a shared limiter (its script scripted: slots at once)
    ledger = FakeLedger()
    ledger.start_run(RUN, 10, None, [PlannedRange(1, 10, 10)])
    client = ScriptedRedis(*([1, 0, 1] for _ in range(10)))
    limiter = RedisRequestLimiter(cast(redis.Redis, client), "quota", 600)
    embedder = SimulatedApiEmbedder(16, 256, 0.0, 1, 2)
    embedder.limiter = limiter
    consumer = handler.Consumer(
        settings=Settings(handoff_margin_seconds=5.0, bedrock_concurrency=3),
        catalog=FakeCatalog([make_drug(i) for i in range(1, 11)]), ledger=ledger, store=FakeStore(),
        embedder=embedder, work_queue=FakeQueue(), dead_letters=FakeQueue(), limiter=limiter,
    )  # fmt: skip
    monkeypatch.setattr(handler, "_consumer", lambda: consumer)

    # WHEN it syncs a range in an invocation of 60 s
    handler.lambda_handler(sqs_event(range_body(RUN, 1, 10, 10)), lambda_context(60.0))

    # THEN each request could wait at most the invocation's remaining time less the hand-off margin
    max_waits = [call["args"][4] / 1_000_000 for call in client.calls]
    assert len(max_waits) == 10
    assert all(50.0 < wait <= 55.0 for wait in max_waits)
    # AND the first chunk was a probe of one request per concurrent slot
    assert consumer.env().probe_chunk_size == 3
