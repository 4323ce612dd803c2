"""Which generation a run writes, and the switch of readers to it at the run's end (with fakes)."""

import uuid
from collections.abc import Mapping, Sequence

import pytest

from consumer.sync import sync_message
from producer.plan import start_sync
from shared.documents import TEXT_TEMPLATE_VERSION
from shared.errors import ConfigError, InvalidMessage, UnavailableError
from shared.generations import (
    Registry,
    choose_generation,
    counts_explained,
    generation_index,
    generation_prefix,
    nesting,
    switch_refusal,
)
from shared.models import (
    AnyMessage,
    Generation,
    PlannedRange,
    RangeMessage,
    RetireMessage,
    SweepMessage,
    SyncRequest,
    parse_message,
)
from shared.ports import GenerationCounts
from tests.fakes import FakeDeadline, FakeGenerations, FakeQueue
from tests.unit.test_sync_range import World

EMBEDDER = "hashing-v1-32"


def _generation(
    number: int, state: str = "live", embedder: str = EMBEDDER, template: int = TEXT_TEMPLATE_VERSION
):
    return Generation(number, embedder, 32, template, f"d@{number}:", f"i@{number}", None, state, "")  # type: ignore[arg-type]


def _registry(current: int | None, *generations: Generation) -> Registry:
    return Registry(current, {g.number: g for g in generations})


@pytest.mark.parametrize(
    ("mode", "registry", "expected"),
    [
        # nothing yet: a full run begins generation 1
        ("full", _registry(None), ("rebuild", None, ())),
        # the current generation matches: a full run writes it
        ("full", _registry(1, _generation(1)), ("full", 1, ())),
        # another embedder (model or dimension): a new generation, by itself
        ("full", _registry(1, _generation(1, embedder="hashing-v1-64")), ("rebuild", None, ())),
        # another text template: a new generation too
        ("full", _registry(1, _generation(1, template=TEXT_TEMPLATE_VERSION - 1)), ("rebuild", None, ())),
        # a matching generation whose switch was refused: continued, the stale building one retired
        (
            "full",
            _registry(
                1,
                _generation(1, embedder="old-8"),
                _generation(2, "building", embedder="x-1"),
                _generation(3, "building"),
            ),
            ("rebuild", 3, (2,)),
        ),
        # a matching current one beside one built for other settings: written, the other retired
        ("full", _registry(1, _generation(1), _generation(2, "building", embedder="x-1")), ("full", 1, (2,))),
        # even beside a matching current one: the rebuild asked for is finished
        ("full", _registry(1, _generation(1), _generation(2, "building")), ("rebuild", 2, ())),
        # a rebuild always begins anew and retires what was being built
        ("rebuild", _registry(1, _generation(1), _generation(2, "building")), ("rebuild", None, (2,))),
        ("incremental", _registry(4, _generation(4)), ("incremental", 4, ())),
    ],
)
def test_the_generation_a_run_writes(mode: str, registry: Registry, expected: tuple) -> None:  # type: ignore[type-arg]
    choice = choose_generation(mode, registry, EMBEDDER)
    assert (choice.mode, choice.number, choice.retire) == expected


def test_an_incremental_run_without_a_current_generation_is_refused() -> None:
    with pytest.raises(ConfigError, match="no current generation"):
        choose_generation("incremental", _registry(None), EMBEDDER)


def test_generation_names_never_nest_with_each_other_or_the_base_prefix() -> None:
    prefixes = ["drug:", *(generation_prefix("drug:", n) for n in (1, 2, 10, 11, 100))]
    assert prefixes[1:3] == ["drug@1:", "drug@2:"]
    assert generation_index("idx:drugs", 3) == "idx:drugs@3"
    assert nesting(prefixes) == []
    # a base prefix without the colon would hold every generation's keys: that is what begin refuses
    assert nesting(["drug", generation_prefix("drug", 1)]) == [("drug", "drug@1:")]


@pytest.mark.parametrize(
    ("indexed", "eligible", "failures", "explained", "agree"),
    [(100, 100, 0, 0, True), (98, 100, 2, 0, True), (99, 100, 0, 0, False), (99, 100, 0, 1, True),
     (101, 100, 0, 0, False)],
)  # fmt: skip
def test_counts_agree_within_what_is_explained(
    indexed: int, eligible: int, failures: int, explained: int, agree: bool
) -> None:
    assert counts_explained(indexed, eligible, failures, explained) is agree


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        (GenerationCounts(100, 100, 0, 10), None),
        (GenerationCounts(100, 99, 1, 10), "1 documents failed to index"),
        (GenerationCounts(100, 90, 0, 10), "holds 90 of the 100 documents"),
        (GenerationCounts(90, 90, 0, 10), "Postgres has 100 eligible"),
        (GenerationCounts(100, 100, 0, 3), "got 3 hits, not 10"),
    ],
)
def test_a_generation_is_switched_to_only_when_every_check_passes(
    counts: GenerationCounts, reason: str | None
) -> None:
    refusal = switch_refusal(counts, eligible=100, open_failures=0, canary_k=10)
    assert refusal is None if reason is None else reason in (refusal or "")


def _rebuilding_world(count: int = 12) -> tuple[World, FakeGenerations]:
    """A world whose runs go through the producer into generations, nothing current yet."""
    world = World(count=count, run_started=False)  # the producer starts each run (one writer at a time)
    gens = FakeGenerations()
    world.env.generations = gens
    world.env.sweep_page_size = 5  # a retirement takes several SCAN pages
    return world, gens


def _start(world: World, gens: FakeGenerations, mode: str = "full"):
    return start_sync(
        SyncRequest(mode=mode), catalog=world.catalog, ledger=world.ledger, queue=world.work_queue,
        generations=gens, embedder_name=world.embedder.name, embedding_dim=32, default_range_size=5,
    )  # fmt: skip


def _drain(world: World) -> None:
    while world.work_queue.bodies:
        sync_message(
            parse_message(world.work_queue.bodies.pop(0)), world.env, FakeDeadline(world.clock, 1000)
        )


def test_a_rebuild_writes_its_own_generation_and_readers_move_only_at_its_end() -> None:
    # GIVEN generation 1 current
    world, gens = _rebuilding_world()
    first = _start(world, gens)
    _drain(world)
    assert (first.generation, gens.read().current) == (1, 1)

    # WHEN a rebuild runs, its ranges done but not yet its end
    rebuild = _start(world, gens, mode="rebuild")
    assert (rebuild.mode, rebuild.generation) == ("rebuild", 2)
    bodies = list(world.work_queue.bodies)
    world.work_queue.bodies.clear()
    for body in bodies[:-1]:
        sync_message(parse_message(body), world.env, FakeDeadline(world.clock, 1000))
    assert gens.read().current == 1  # readers still on generation 1
    assert len(gens.store(2).documents) > 0
    assert len(gens.store(1).documents) == 12
    world.work_queue.bodies[:0] = bodies[-1:]
    _drain(world)

    # THEN readers are on generation 2, generation 1 is retired and forgotten, the run complete
    progress = world.ledger.progress(rebuild.run_id)
    assert progress is not None
    assert (gens.read().current, progress.state, progress.switched_at is not None) == (2, "complete", True)
    assert gens.store(1).documents == {}
    assert 1 not in gens.read().generations
    assert len(gens.store(2).documents) == 12


def test_a_generation_that_fails_verification_is_not_switched_to_and_the_run_stays_unfinished() -> None:
    world, gens = _rebuilding_world()
    _start(world, gens)
    _drain(world)
    gens.indexing_failures = 2
    rebuild = _start(world, gens, mode="rebuild")

    _drain(world)

    progress = world.ledger.progress(rebuild.run_id)
    assert progress is not None
    assert gens.read().current == 1
    assert (progress.state, progress.finished_at) == ("switch_refused", None)
    assert "2 documents failed to index" in (progress.switch_error or "")
    assert len(gens.store(1).documents) == 12  # the current generation untouched


def test_a_later_full_run_continues_the_refused_generation_and_switches() -> None:
    world, gens = _rebuilding_world()
    _start(world, gens)
    _drain(world)
    gens.indexing_failures = 2
    _start(world, gens, mode="rebuild")
    _drain(world)
    gens.indexing_failures = 0
    embedded = world.embedder.texts

    again = _start(world, gens)
    _drain(world)

    assert (again.mode, again.generation, gens.read().current) == ("rebuild", 2, 2)
    assert world.embedder.texts == embedded  # every drug already current in generation 2: none embedded
    assert gens.store(1).documents == {}


def test_a_consumer_with_another_embedder_refuses_to_write_the_generation() -> None:
    world, gens = _rebuilding_world()
    summary = start_sync(
        SyncRequest(), catalog=world.catalog, ledger=world.ledger, queue=world.work_queue,
        generations=gens, embedder_name="bedrock-titan-1024", embedding_dim=1024, default_range_size=5,
    )  # fmt: skip
    assert summary.generation == 1
    with pytest.raises(ConfigError, match=r"embedded by bedrock-titan-1024.*embeds with hashing"):
        _drain(world)


def test_the_current_generation_is_never_retired() -> None:
    world, gens = _rebuilding_world()
    summary = _start(world, gens)
    _drain(world)
    with pytest.raises(InvalidMessage, match="is current"):
        sync_message(
            RetireMessage(run_id=summary.run_id, generation=1), world.env, FakeDeadline(world.clock, 1000)
        )
    assert len(gens.store(1).documents) == 12


@pytest.mark.parametrize("retired", ["retiring", "forgotten"])
def test_a_run_whose_generation_was_retired_meanwhile_never_switches_to_it(retired: str) -> None:
    # GIVEN a rebuild whose generation is retired (a later rebuild replaced it) before its end: marked
    # retiring (its Retire not yet run), or already forgotten
    world, gens = _rebuilding_world()
    _start(world, gens)
    _drain(world)
    rebuild = _start(world, gens, mode="rebuild")
    bodies = list(world.work_queue.bodies)
    world.work_queue.bodies.clear()
    for body in bodies[:-1]:
        sync_message(parse_message(body), world.env, FakeDeadline(world.clock, 1000))
    if retired == "retiring":
        gens.mark_retiring(2)
    else:
        gens.forget(2)

    # WHEN its last range and sweep are done
    world.work_queue.bodies[:0] = bodies[-1:]
    _drain(world)

    # THEN readers stay on generation 1 and the run says why it did not switch
    progress = world.ledger.progress(rebuild.run_id)
    assert progress is not None
    assert (gens.read().current, gens.switches) == (1, [1])
    assert progress.switch_error == "generation 2 was retired (a later rebuild replaced it)"


def test_a_retirement_short_of_time_continues_from_its_cursor_and_removes_every_key() -> None:
    # GIVEN generation 1 replaced by generation 2, its retirement not yet run
    world, gens = _rebuilding_world(count=30)
    _start(world, gens)
    _drain(world)
    rebuild = _start(world, gens, mode="rebuild")
    messages = [parse_message(body) for body in world.work_queue.bodies]
    world.work_queue.bodies.clear()
    for message in messages:
        sync_message(message, world.env, FakeDeadline(world.clock, 1000))
    while not any('"retire"' in body for body in world.work_queue.bodies):
        sync_message(
            parse_message(world.work_queue.bodies.pop(0)), world.env, FakeDeadline(world.clock, 1000)
        )
    retire = parse_message(world.work_queue.bodies.pop())
    assert isinstance(retire, RetireMessage)
    assert (retire.run_id, retire.generation) == (rebuild.run_id, 1)

    # WHEN each invocation has time for about two pages of 5 keys
    world.env.sweep_page_size = 5
    world.env.margin_seconds = 0
    clock = world.clock
    real_unlink = gens.unlink_page

    def slow_unlink(number: int, cursor: int, count: int) -> tuple[int, int]:
        clock.sleep(1.0)
        return real_unlink(number, cursor, count)

    gens.unlink_page = slow_unlink  # type: ignore[method-assign]
    invocations, pending = 0, list[AnyMessage]([retire])
    while pending:
        outcome = sync_message(pending.pop(), world.env, FakeDeadline(clock, 2.5))
        invocations += 1
        pending += [parse_message(body) for body in world.work_queue.bodies]
        world.work_queue.bodies.clear()

    # THEN it took several invocations, continued from its cursor, and generation 1 is gone
    assert invocations >= 3
    assert outcome.continued_at is None
    assert gens.store(1).documents == {}
    assert sorted(gens.read().generations) == [2]


def test_a_new_run_retires_what_an_earlier_switch_left_retiring() -> None:
    # GIVEN generation 1 left retiring (its retire message was lost) and generation 2 current
    world, gens = _rebuilding_world()
    _start(world, gens)
    _drain(world)
    _start(world, gens, mode="rebuild")
    _drain(world)
    gens._put(_generation(1, "retiring"))  # as switch() leaves it, before the retire message
    world.work_queue.bodies.clear()

    # WHEN the next run starts
    summary = _start(world, gens)

    # THEN a retire message for generation 1 goes out with its ranges
    retires = [m for m in map(parse_message, world.work_queue.bodies) if isinstance(m, RetireMessage)]
    assert [(m.run_id, m.generation) for m in retires] == [(summary.run_id, 1)]


def test_a_capped_first_run_switches_readers_to_what_it_synced() -> None:
    world, gens = _rebuilding_world(count=30)
    summary = start_sync(
        SyncRequest(max_drugs=10), catalog=world.catalog, ledger=world.ledger, queue=world.work_queue,
        generations=gens, embedder_name=world.embedder.name, embedding_dim=32, default_range_size=5,
    )  # fmt: skip

    _drain(world)

    progress = world.ledger.progress(summary.run_id)
    assert progress is not None
    assert (progress.state, gens.read().current, len(gens.store(1).documents)) == ("complete", 1, 10)


def test_a_capped_run_that_would_replace_the_current_generation_is_refused() -> None:
    world, gens = _rebuilding_world()
    _start(world, gens)
    _drain(world)
    with pytest.raises(ConfigError, match=r"capped at 10 drugs cannot rebuild generation 1"):
        start_sync(
            SyncRequest(max_drugs=10, mode="rebuild"), catalog=world.catalog, ledger=world.ledger,
            queue=world.work_queue, generations=gens, embedder_name=world.embedder.name, embedding_dim=32,
            default_range_size=5,
        )  # fmt: skip
    assert sorted(gens.read().generations) == [1]  # nothing begun


def test_a_rebuild_superseded_while_its_sweep_runs_never_switches_readers() -> None:
    # GIVEN a rebuild into generation 2 whose sweep passed the superseded check, then
    # `rebuild --supersede` (which marks generation 2 retiring) lands before the sweep ends
    world, gens = _rebuilding_world()
    _start(world, gens)
    _drain(world)
    first = _start(world, gens, mode="rebuild")
    real_mark_swept = world.ledger.mark_swept
    later: list[object] = []

    def superseded_meanwhile(run_id: uuid.UUID) -> None:
        if run_id == first.run_id and not later:
            later.append(start_sync(
                SyncRequest(mode="rebuild", supersede=True), catalog=world.catalog, ledger=world.ledger,
                queue=FakeQueue(), generations=gens, embedder_name=world.embedder.name, embedding_dim=32,
                default_range_size=5,
            ))  # fmt: skip
        real_mark_swept(run_id)

    world.ledger.mark_swept = superseded_meanwhile  # type: ignore[method-assign]

    # WHEN the first rebuild's messages all run
    _drain(world)

    # THEN readers stay on generation 1: the superseded run neither counts its sweep nor switches
    progress = world.ledger.progress(first.run_id)
    assert progress is not None
    assert later, "the supersede never happened"
    assert (gens.read().current, gens.switches) == (1, [1])
    assert (progress.state, progress.swept_at, progress.switched_at) == ("superseded", None, None)
    assert gens.read().generations[2].state == "retiring"


def test_a_generation_begun_without_its_index_gets_one_when_a_later_run_continues_it() -> None:
    # GIVEN generation 1 current, and a rebuild whose generation 2 was recorded but whose index
    # could not be created (Redis failed between the two)
    world, gens = _rebuilding_world()
    _start(world, gens)
    _drain(world)
    failing = gens.store(2)

    def refuse(dimension: int) -> None:
        raise UnavailableError("Redis failed while creating the index")

    failing.ensure_index = refuse  # type: ignore[method-assign]
    with pytest.raises(UnavailableError):
        _start(world, gens, mode="rebuild")
    del failing.ensure_index
    assert (gens.read().generations[2].state, failing.index_dimension) == ("building", None)

    # WHEN the next full sync continues generation 2 and its messages run
    again = start_sync(
        SyncRequest(supersede=True), catalog=world.catalog, ledger=world.ledger, queue=world.work_queue,
        generations=gens, embedder_name=world.embedder.name, embedding_dim=32, default_range_size=5,
    )  # fmt: skip
    _drain(world)

    # THEN generation 2 has its index and readers were switched to it
    assert (again.mode, again.generation, failing.index_dimension) == ("rebuild", 2, 32)
    assert gens.read().current == 2


class _RetiresFail(FakeQueue):
    """SQS failing every send of a Retire while `down` (the one right after the switch, retries too)."""

    def __init__(self, inner: FakeQueue) -> None:
        super().__init__()
        self.bodies, self.sent, self.down = inner.bodies, inner.sent, True

    def send_messages(
        self, bodies: Sequence[str], attributes: Mapping[str, str] | None = None, delay_seconds: int = 0
    ) -> int:
        if self.down and any('"retire"' in body for body in bodies):
            raise UnavailableError("SQS failed while sending messages")
        return super().send_messages(bodies, attributes, delay_seconds)


def test_a_generation_whose_retire_was_lost_is_retired_when_the_run_finishes() -> None:
    # GIVEN generation 1 current, and a rebuild whose switch's Retire of generation 1 fails to send
    world, gens = _rebuilding_world()
    _start(world, gens)
    _drain(world)
    rebuild = _start(world, gens, mode="rebuild")
    world.env.work_queue = queue = _RetiresFail(world.work_queue)
    with pytest.raises(UnavailableError):
        _drain(world)
    assert (gens.read().current, gens.read().generations[1].state) == (2, "retiring")

    # WHEN SQS is back, the failed message is delivered again and the run finishes
    queue.down = False
    sync_message(SweepMessage(run_id=rebuild.run_id), world.env, FakeDeadline(world.clock, 1000))
    _drain(world)

    # THEN generation 1 is retired and forgotten, and the run complete
    progress = world.ledger.progress(rebuild.run_id)
    assert progress is not None
    assert (progress.state, sorted(gens.read().generations), gens.store(1).documents) == ("complete", [2], {})

    # AND a Retire sent again finds nothing left to do
    sync_message(
        RetireMessage(run_id=rebuild.run_id, generation=1), world.env, FakeDeadline(world.clock, 1000)
    )
    assert (sorted(gens.read().generations), gens.read().current) == ([2], 2)


def test_a_full_run_recorded_without_its_generation_never_writes_to_keys_no_index_reads() -> None:
    # GIVEN a full run recorded (with its claim) whose generation could not be opened
    world, gens = _rebuilding_world()
    run_id = uuid.uuid4()
    world.ledger.start_run(run_id, 12, None, [PlannedRange(1, 12, 12)], source_table="drugs")
    message = RangeMessage(run_id=run_id, first_id=1, last_id=12, expected_count=12)

    # WHEN one of its range messages arrives anyway (a resume, a late redelivery)
    with pytest.raises(InvalidMessage, match="no generation recorded"):
        sync_message(message, world.env, FakeDeadline(world.clock, 1000))

    # THEN nothing was written anywhere
    assert world.store.documents == {}
    assert gens.stores == {}


def test_a_run_whose_generation_is_being_retired_never_writes_into_it() -> None:
    # GIVEN a run that chose generation 1, which a rebuild has since marked retiring
    world, gens = _rebuilding_world()
    run = _start(world, gens)
    gens.mark_retiring(run.generation)

    # WHEN its first range arrives, THEN it is refused and nothing is written under the retiring prefix
    with pytest.raises(InvalidMessage, match="which is retired"):
        sync_message(parse_message(world.work_queue.bodies[0]), world.env, FakeDeadline(world.clock, 1000))
    assert gens.store(run.generation).documents == {}
