import math
import uuid
from datetime import UTC, datetime

import pytest

from consumer.sync import SyncEnv, sync_message
from shared.documents import build_document
from shared.errors import InvalidMessage, UnavailableError
from shared.models import PlannedRange, RangeMessage, RowsMessage
from shared.retry import RetryPolicy
from tests.fakes import (
    CountingEmbedder,
    FakeCatalog,
    FakeClock,
    FakeDeadline,
    FakeLedger,
    FakeQueue,
    FakeStore,
    RecordingTelemetry,
    make_drug,
    unit_vector,
)

RUN = uuid.uuid4()


class World:
    """A catalog of drugs 1..count, one planned range over all of them, and fakes around it."""

    def __init__(self, count: int = 25, chunk_size: int = 10, **embedder_options) -> None:
        self.clock = FakeClock()
        drugs = [make_drug(i, name=f"Drug {i} 10 mg tablet") for i in range(1, count + 1)]
        self.catalog = FakeCatalog(drugs, broken=embedder_options.pop("broken", None))
        self.embedder = CountingEmbedder(dimension=32, clock=self.clock, **embedder_options)
        self.store, self.ledger = FakeStore(), FakeLedger()
        self.work_queue, self.dead_letters = FakeQueue(), FakeQueue()
        self.ledger.start_run(RUN, count, None, [PlannedRange(1, count, count)])
        self.env = SyncEnv(
            catalog=self.catalog, embedder=self.embedder, store=self.store, ledger=self.ledger,
            work_queue=self.work_queue, dead_letters=self.dead_letters,
            retry=RetryPolicy(base_seconds=1.0, budget_seconds=30.0, sleep=self.clock.sleep, clock=self.clock),
            chunk_size=chunk_size, margin_seconds=1.0, seconds_per_drug=0.1, clock=self.clock,
        )  # fmt: skip
        self.message = RangeMessage(run_id=RUN, first_id=1, last_id=count, expected_count=count)

    def run(self, message=None, seconds: float = 1000.0):
        return sync_message(message or self.message, self.env, FakeDeadline(self.clock, seconds))

    def drain(self, seconds: float) -> int:
        """Run the first message, then every continuation it leaves; returns the invocations."""
        invocations, pending = 0, [self.message]
        while pending:
            before = len(self.work_queue.bodies)
            self.run(pending.pop(0), seconds)
            invocations += 1
            pending += [RangeMessage.model_validate_json(b) for b in self.work_queue.bodies[before:]]
        return invocations


def test_every_eligible_drug_is_written_and_the_range_marked_done_once() -> None:
    world = World(count=25)

    outcome = world.run()
    again = world.run()

    assert sorted(world.store.documents) == list(range(1, 26))
    assert outcome.range_done is True
    assert again.range_done is False
    assert world.ledger.done == {(RUN, 1): 25}
    assert world.embedder.calls == 3  # 3 chunks of <= 10: never one call per drug
    assert again.drugs_written == 0  # the redelivered range is already done: nothing is embedded again


def test_a_short_timeout_hands_off_the_rest_without_re_embedding_finished_rows() -> None:
    # GIVEN each text takes 0.1 s to embed and an invocation has 3 s, the range needs 10 s
    world = World(count=100, chunk_size=10, seconds_per_text=0.1)

    invocations = world.drain(seconds=3.0)

    assert invocations > 3
    assert sorted(world.store.documents) == list(range(1, 101))
    assert world.embedder.texts == 100  # each drug embedded exactly once
    assert len(set(world.embedder.embedded)) == 100
    assert world.ledger.done == {(RUN, 1): 100}
    continuation = RangeMessage.model_validate_json(world.work_queue.bodies[0])
    assert continuation.range_key == 1
    assert continuation.last_id == 100
    assert continuation.first_id > 1


def test_rejected_texts_are_isolated_by_halving_and_sent_to_the_dlq_by_id() -> None:
    poison = {17, 42, 43}
    world = World(count=64, chunk_size=64, rejects=lambda text: any(f"Drug {i} " in text for i in poison))

    outcome = world.run()

    assert sorted(outcome.failed_ids) == sorted(poison)
    assert set(world.store.documents) == set(range(1, 65)) - poison
    dead = [RowsMessage.model_validate_json(body) for body in world.dead_letters.bodies]
    assert sorted(i for message in dead for i in message.ids) == sorted(poison)
    assert {message.error_class for message in dead} == {"EmbeddingError"}
    assert world.ledger.done == {(RUN, 1): 61}
    # halving: far fewer calls than trying each of the 64 rows alone
    assert world.embedder.calls <= 1 + 2 * len(poison) * math.ceil(math.log2(64))
    assert world.embedder.calls < 64


def test_broken_rows_and_refused_documents_fail_alone() -> None:
    world = World(count=10, broken={3: "ndc: String should have at least 1 character"})
    world.store._rejects = lambda document: "ERR document too large" if document["id"] == 7 else None

    outcome = world.run()

    assert sorted(outcome.failed_ids) == [3, 7]
    assert set(world.store.documents) == set(range(1, 11)) - {3, 7}
    reasons = {attributes["reason"] for _, attributes, _ in world.dead_letters.sent}
    assert reasons == {"drug id 3: ndc: String should have at least 1 character", "ERR document too large"}
    progress = world.ledger.progress(RUN)
    assert progress is not None
    assert progress.state == "complete_with_failures"


def test_throttling_is_retried_in_the_invocation_with_backoff() -> None:
    world = World(count=10, unavailable_calls=4)

    outcome = world.run()

    assert outcome.range_done is True
    assert world.env.retry.retries == 4
    assert world.dead_letters.bodies == []


def test_a_throttling_storm_defers_the_rest_instead_of_failing_the_message() -> None:
    world = World(count=30, chunk_size=10, unavailable_calls=1_000)

    outcome = world.run(seconds=20.0)

    assert outcome.deferred is True
    body, _, delay = world.work_queue.sent[0]
    deferred = RangeMessage.model_validate_json(body)
    assert (deferred.first_id, deferred.deferrals) == (1, 1)
    assert delay > 0
    assert world.dead_letters.bodies == []


def test_a_range_the_run_does_not_have_is_rejected() -> None:
    world = World(count=10)
    stranger = RangeMessage(run_id=uuid.uuid4(), first_id=1, last_id=10, expected_count=10)
    with pytest.raises(InvalidMessage, match=r"has no range 1\.\.10"):
        world.run(stranger)


def test_rows_back_from_the_dlq_are_written_and_resolved() -> None:
    world = World(count=10, broken={4: "ndc: empty"})
    world.run()
    assert world.ledger.progress(RUN).state == "complete_with_failures"  # type: ignore[union-attr]
    world.catalog.broken.clear()  # the row is fixed in Postgres

    outcome = world.run(RowsMessage(run_id=RUN, ids=[4]))

    assert outcome.drugs_written == 1
    assert 4 in world.store.documents
    assert world.ledger.progress(RUN).state == "complete"  # type: ignore[union-attr]


def test_unavailable_errors_beyond_the_deferral_limit_fail_the_message() -> None:
    world = World(count=10, unavailable_calls=1_000)
    exhausted = world.message.model_copy(update={"deferrals": 20})
    with pytest.raises(UnavailableError):
        world.run(exhausted, seconds=5.0)


def test_broken_rows_are_isolated_once_even_when_the_range_continues() -> None:
    # GIVEN broken rows spread over a range that needs several invocations
    world = World(count=100, chunk_size=10, seconds_per_text=0.1, broken={5: "bad", 55: "bad", 100: "bad"})

    world.drain(seconds=3.0)

    dead_ids = [i for body in world.dead_letters.bodies for i in RowsMessage.model_validate_json(body).ids]
    assert sorted(dead_ids) == [5, 55, 100]  # each exactly once
    assert set(world.store.documents) == set(range(1, 101)) - {5, 55, 100}
    assert world.ledger.done == {(RUN, 1): 97}


def test_a_newer_version_already_in_redis_is_kept_and_the_skip_is_counted() -> None:
    # GIVEN drug 5 was rewritten meanwhile: Redis holds a version newer than this run read
    world = World(count=10)
    world.env.telemetry = telemetry = RecordingTelemetry()
    newer = make_drug(5, name="Renamed 10 mg tablet", updated_at=datetime(2026, 6, 1, tzinfo=UTC))
    world.store.write_documents([(5, build_document(newer, unit_vector(32), world.embedder.name))])

    outcome = world.run()

    assert world.store.documents[5]["name"] == "Renamed 10 mg tablet"
    assert telemetry.counts["StaleWritesSkipped"] == 1
    assert outcome.failed_ids == ()
    assert outcome.range_done is True
    assert world.dead_letters.bodies == []
