import math
import uuid
from datetime import UTC, datetime

import pytest

from consumer.sync import SyncEnv, sync_message
from shared.documents import build_document, build_embedding_text
from shared.embedders.bedrock import TitanEmbedder
from shared.errors import InvalidMessage, ProviderError, UnavailableError
from shared.models import MAX_DEFERRALS, PlannedRange, RangeMessage, RowsMessage, SweepMessage, parse_message
from shared.retry import RetryPolicy
from tests.factories import TOO_LONG, count_requests, refuse, titan_response
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

    def __init__(
        self, count: int = 25, chunk_size: int = 10, run_started: bool = True, **embedder_options
    ) -> None:
        self.clock = FakeClock()
        drugs = [make_drug(i, name=f"Drug {i} 10 mg tablet") for i in range(1, count + 1)]
        self.catalog = FakeCatalog(drugs, broken=embedder_options.pop("broken", None))
        self.embedder = CountingEmbedder(dimension=32, clock=self.clock, **embedder_options)
        self.store, self.ledger = FakeStore(), FakeLedger()
        self.work_queue, self.dead_letters = FakeQueue(), FakeQueue()
        if run_started:  # else the test starts its own run (one writer at a time)
            self.ledger.start_run(RUN, count, None, [PlannedRange(1, count, count)], source_table="drugs")
        self.env = SyncEnv(
            catalog=self.catalog, embedder=self.embedder, store=self.store, ledger=self.ledger,
            work_queue=self.work_queue, dead_letters=self.dead_letters,
            retry=RetryPolicy(base_seconds=1.0, budget_seconds=30.0, sleep=self.clock.sleep, clock=self.clock),
            chunk_size=chunk_size, margin_seconds=1.0, seconds_per_drug=0.1, clock=self.clock,
        )  # fmt: skip
        self.message = RangeMessage(run_id=RUN, first_id=1, last_id=count, expected_count=count)

    def run(self, message=None, seconds: float = 1000.0):
        return sync_message(message or self.message, self.env, FakeDeadline(self.clock, seconds))

    def drain(self, seconds: float, first=None) -> int:
        """Run a message (the range by default), then every message it leaves; returns the invocations."""
        invocations, pending = 0, [first or self.message]
        while pending:
            before = len(self.work_queue.bodies)
            self.run(pending.pop(0), seconds)
            invocations += 1
            pending += [parse_message(b) for b in self.work_queue.bodies[before:]]
        return invocations

    def state(self) -> str:
        progress = self.ledger.progress(RUN)
        assert progress is not None
        return progress.state


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
    world.drain(seconds=1000, first=parse_message(world.work_queue.bodies[-1]))  # the run's sweep

    assert sorted(outcome.failed_ids) == [3, 7]
    assert set(world.store.documents) == set(range(1, 11)) - {3, 7}
    reasons = {attributes["reason"] for _, attributes, _ in world.dead_letters.sent}
    assert reasons == {"drug id 3: ndc: String should have at least 1 character", "ERR document too large"}
    assert world.state() == "complete_with_failures"


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
    world.drain(seconds=1000)
    assert world.state() == "complete_with_failures"
    world.catalog.broken.clear()  # the row is fixed in Postgres

    outcome = world.run(RowsMessage(run_id=RUN, ids=[4]))

    assert outcome.drugs_written == 1
    assert 4 in world.store.documents
    assert world.state() == "complete"


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


ACCESS_DENIED = ProviderError("bedrock: AccessDeniedException: You don't have access to the model")


def test_an_account_level_refusal_defers_the_rest_of_the_range_and_isolates_nothing() -> None:
    # GIVEN the first chunk embeds and then the provider refuses the account
    world = World(count=30, chunk_size=10, raises=[None, ACCESS_DENIED])

    outcome = world.run()

    assert outcome.deferred is True
    assert outcome.failed_ids == ()
    assert sorted(world.store.documents) == list(range(1, 11))
    body, _, delay = world.work_queue.sent[0]
    deferred = RangeMessage.model_validate_json(body)
    assert (deferred.first_id, deferred.last_id, deferred.deferrals) == (11, 30, 1)
    assert delay == 8
    assert world.dead_letters.bodies == []
    assert world.ledger.failures == {}
    assert world.ledger.done == {}
    assert world.embedder.calls == 2  # not retried in the invocation, not halved


def test_an_account_level_refusal_beyond_the_deferral_limit_fails_the_message() -> None:
    world = World(count=10, raises=[ACCESS_DENIED])
    exhausted = world.message.model_copy(update={"deferrals": MAX_DEFERRALS})

    with pytest.raises(ProviderError):
        world.run(exhausted)

    assert world.work_queue.bodies == []
    assert world.dead_letters.bodies == []


def test_an_account_level_refusal_fails_a_rows_message_instead_of_isolating_its_rows() -> None:
    world = World(count=10, broken={4: "ndc: empty"})
    world.run()
    world.catalog.broken.clear()
    world.embedder.raises = [ACCESS_DENIED]
    letters = len(world.dead_letters.bodies)

    with pytest.raises(ProviderError):
        world.run(RowsMessage(run_id=RUN, ids=[4]))

    assert len(world.dead_letters.bodies) == letters
    assert world.ledger.progress(RUN).open_failures == 1  # type: ignore[union-attr]
    assert 4 not in world.store.documents


def with_titan(world: World, client) -> None:
    world.env.embedder = TitanEmbedder(
        client, "amazon.titan-embed-text-v2:0", 256, batch_size=256, concurrency=1
    )


def test_one_text_titan_refuses_among_256_costs_256_requests_and_fails_alone(bedrock) -> None:
    client, stubber = bedrock
    world = World(count=256, chunk_size=256)
    with_titan(world, client)
    sent = count_requests(client)
    for drug_id in range(1, 257):
        if drug_id == 100:
            refuse(stubber, "ValidationException", 400, TOO_LONG)
        else:
            stubber.add_response("invoke_model", titan_response([1.0] * 256))

    outcome = world.run()

    assert len(sent) == 256
    assert outcome.failed_ids == (100,)
    assert set(world.store.documents) == set(range(1, 257)) - {100}
    dead = [RowsMessage.model_validate_json(body) for body in world.dead_letters.bodies]
    assert [message.ids for message in dead] == [[100]]
    assert "Malformed input request" in (dead[0].error or "")
    assert world.ledger.done == {(RUN, 1): 255}
    stubber.assert_no_pending_responses()


def test_every_text_titan_refuses_alike_defers_the_range_as_the_model_at_fault(bedrock) -> None:
    client, stubber = bedrock
    world = World(count=8, chunk_size=8)
    with_titan(world, client)
    sent = count_requests(client)
    for _ in range(8):
        refuse(stubber, "ValidationException", 400, "Malformed input request: #/dimensions: 100 is not valid")

    outcome = world.run()

    assert len(sent) == 8
    assert outcome.deferred is True
    assert outcome.failed_ids == ()
    assert world.dead_letters.bodies == []
    assert world.ledger.failures == {}
    assert RangeMessage.model_validate_json(world.work_queue.bodies[0]).first_id == 1


# The wait before a deferred range is seen again, by the deferral it is: doubling from 8 s, capped at
# SQS's 900 s maximum DelaySeconds.
DEFERRAL_DELAYS = {1: 8, 2: 16, 3: 32, 4: 64, 5: 128, 6: 256, 7: 512, 8: 900, 9: 900, MAX_DEFERRALS: 900}


@pytest.mark.parametrize(("deferral", "delay"), sorted(DEFERRAL_DELAYS.items()))
def test_each_deferral_waits_longer_up_to_the_cap(deferral: int, delay: int) -> None:
    world = World(count=10, unavailable_calls=1_000)
    message = world.message.model_copy(update={"deferrals": deferral - 1})

    outcome = world.run(message, seconds=20.0)

    assert outcome.deferred is True
    body, _, sent_delay = world.work_queue.sent[0]
    assert RangeMessage.model_validate_json(body).deferrals == deferral
    assert sent_delay == delay


def test_a_range_deferred_the_most_times_allowed_fails_instead_of_deferring_again() -> None:
    world = World(count=10, unavailable_calls=1_000)
    last = world.message.model_copy(update={"deferrals": MAX_DEFERRALS})

    with pytest.raises(UnavailableError):
        world.run(last, seconds=20.0)

    assert world.work_queue.bodies == []


def test_a_newer_version_already_in_redis_is_kept_and_the_skip_is_counted() -> None:
    # GIVEN drug 5 was rewritten meanwhile: Redis holds a version newer than this run read
    world = World(count=10)
    world.env.telemetry = telemetry = RecordingTelemetry()
    newer = make_drug(5, name="Renamed 10 mg tablet", read_at=datetime(2026, 6, 1, tzinfo=UTC))
    world.store.write_documents([(5, build_document(newer, unit_vector(32), world.embedder.name))])

    outcome = world.run()

    assert world.store.documents[5]["name"] == "Renamed 10 mg tablet"
    assert telemetry.counts["StaleWritesSkipped"] == 1
    assert outcome.failed_ids == ()
    assert outcome.range_done is True
    assert world.dead_letters.bodies == []


def _next_full_run(world: World, count: int) -> RangeMessage:
    """Another full run over the same catalog: the first one ends (its sweep), as one writer at a time
    requires, then a new run id, its one range planned."""
    world.run(SweepMessage(run_id=RUN))
    assert world.state() == "complete"
    run = uuid.uuid4()
    world.ledger.start_run(run, count, None, [PlannedRange(1, count, count)])
    return RangeMessage(run_id=run, first_id=1, last_id=count, expected_count=count)


def test_a_full_run_over_an_unchanged_catalog_embeds_and_writes_nothing() -> None:
    world = World(count=25)
    telemetry = RecordingTelemetry()
    world.env.telemetry = telemetry
    world.run()
    calls, writes, stored = world.embedder.calls, world.store.write_calls, dict(world.store.documents)

    outcome = world.run(_next_full_run(world, 25))

    assert world.embedder.calls == calls  # not one text embedded again
    assert world.store.write_calls == writes  # nor one document rewritten
    assert world.store.documents == stored
    assert (outcome.drugs_written, outcome.drugs_skipped, outcome.range_done) == (0, 25, True)
    assert telemetry.counts["DrugsSkipped"] == 25
    assert telemetry.counts["DrugsSynced"] == 50  # current in Redis after each run, skipped or not


def test_only_the_edited_drugs_are_embedded_again_and_a_missing_document_is_written() -> None:
    world = World(count=25)
    world.run()
    world.catalog.drugs[7] = world.catalog.drugs[7].model_copy(update={"description": "now film-coated"})
    del world.store.documents[20]  # gone from Redis (an eviction, a hand-made delete)
    texts = world.embedder.texts

    outcome = world.run(_next_full_run(world, 25))

    assert world.embedder.texts - texts == 2
    assert world.embedder.embedded[-2:] == [
        build_embedding_text(world.catalog.drugs[7]),
        build_embedding_text(world.catalog.drugs[20]),
    ]
    assert world.store.documents[7]["description"] == "now film-coated"
    assert 20 in world.store.documents
    assert (outcome.drugs_written, outcome.drugs_skipped) == (2, 23)
    assert world.store.absent_hints[-2:] == [set(), {20}]  # chunks of 10: 7 is stored, 20 is not


def test_another_embedder_or_dimension_embeds_every_drug_again() -> None:
    world = World(count=25)
    world.run()
    texts = world.embedder.texts
    world.env.embedder = CountingEmbedder(dimension=64, clock=world.clock)

    outcome = world.run(_next_full_run(world, 25))

    assert world.env.embedder.texts == 25
    assert world.embedder.texts == texts
    assert (outcome.drugs_written, outcome.drugs_skipped) == (25, 0)
