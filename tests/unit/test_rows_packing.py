import random
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.sync import isolate
from shared.models import (
    MAX_BODY_BYTES,
    MAX_ROWS_PER_MESSAGE,
    RowFailure,
    RowsMessage,
    pack_rows_messages,
    parse_message,
)
from tests.fakes import FakeDeadline
from tests.unit.test_sync_range import World

RUN = uuid.UUID("00000000-0000-4000-8000-000000000001")
BIGINT = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# The longest ids there are, and texts whose JSON is longest: escaped control characters, 4-byte emoji.
WIDE_ID = st.one_of(st.integers(-(2**63), -(10**18)), BIGINT)
CAUSE_TEXT = st.text(alphabet=st.sampled_from(["\x01", '"', "\\", "😀", "é", "a"]), max_size=2500)


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(WIDE_ID, max_size=2500),
    error_class=st.none() | CAUSE_TEXT,
    error=st.none() | CAUSE_TEXT,
    max_rows=st.sampled_from([1, 7, 500, MAX_ROWS_PER_MESSAGE]),
)
def test_packed_bodies_hold_every_id_once_and_each_fits_the_limits(
    ids: list[int], error_class: str | None, error: str | None, max_rows: int
) -> None:
    # WHEN the ids of one cause are packed
    bodies = pack_rows_messages(RUN, ids, error_class, error, max_rows)

    # THEN every body is one the consumer accepts, within both limits, with the run and cause
    messages = [parse_message(body) for body in bodies]
    assert all(len(body.encode()) <= MAX_BODY_BYTES for body in bodies)
    assert all(isinstance(m, RowsMessage) and len(m.ids) <= max_rows for m in messages)
    rows = [m for m in messages if isinstance(m, RowsMessage)]
    assert {(m.run_id, m.error_class, m.error) for m in rows} <= {
        (RUN, error_class and error_class[:200], error and error[:2000])
    }
    # AND together they name every id exactly once
    packed = [i for m in rows for i in m.ids]
    assert sorted(packed) == sorted(set(ids))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(0, 3000), error=st.none() | CAUSE_TEXT)
def test_bodies_of_many_ids_are_full_up_to_the_byte_limit_and_never_over_it(
    seed: int, count: int, error: str | None
) -> None:
    # GIVEN thousands of ids across the whole bigint range, mostly the widest (what lists rarely draw)
    rng = random.Random(seed)
    wide = [(-(2**63), -(10**17)), (10**17, 2**63 - 1)]
    ids = [
        rng.randint(*rng.choice(wide)) if rng.random() < 0.9 else rng.randint(-999, 999) for _ in range(count)
    ]

    bodies = pack_rows_messages(RUN, ids, "RowError", error)

    # THEN no body is over the limit, and each but the last is as full as it can be
    unique = list(dict.fromkeys(ids))
    assert [i for body in bodies for i in RowsMessage.model_validate_json(body).ids] == unique
    assert all(len(body.encode()) <= MAX_BODY_BYTES for body in bodies)
    taken = 0
    for body in bodies[:-1]:
        held = len(RowsMessage.model_validate_json(body).ids)
        taken += held
        next_cost = len(str(unique[taken])) + 1
        assert held == MAX_ROWS_PER_MESSAGE or len(body.encode()) + next_cost > MAX_BODY_BYTES


def test_a_full_message_of_the_widest_ids_is_split_by_bytes_not_only_by_count() -> None:
    ids = [-(2**63) + i for i in range(MAX_ROWS_PER_MESSAGE)]

    bodies = pack_rows_messages(RUN, ids, "RowError", "x" * 2000)

    assert len(bodies) > 1
    assert all(len(body.encode()) <= MAX_BODY_BYTES for body in bodies)


def test_isolating_thousands_of_rows_of_one_cause_sends_messages_the_redrive_accepts() -> None:
    # GIVEN 2,500 rows with 19-digit negative ids failing for the same long reason
    world = World(count=1)
    reason = "ndc: String should have at least 1 character — " + "é" * 1900
    failures = [RowFailure(-(2**63) + 7 * i, "RowError", reason) for i in range(2500)]

    # WHEN they are isolated
    isolate(world.env, FakeDeadline(world.clock, 1000.0), RUN, failures)

    # THEN every dead letter parses (as the consumer parses it on redrive) and all ids are there once
    messages = [parse_message(body) for body in world.dead_letters.bodies]
    ids = [i for m in messages if isinstance(m, RowsMessage) for i in m.ids]
    assert sorted(ids) == sorted(f.drug_id for f in failures)
    assert {attributes["error_class"] for _, attributes, _ in world.dead_letters.sent} == {"RowError"}


def _ids_filling(total_bytes: int) -> list[int]:
    """Distinct ids whose rows message (cause 'RowError', no error text) is exactly total_bytes long."""
    ids: list[int] = []
    while True:
        size = len(RowsMessage(run_id=RUN, ids=[*ids, 0], error_class="RowError").model_dump_json().encode())
        room = total_bytes - size + 1  # what the trailing '0' stands in for
        if room <= 19:
            return [*ids, 10 ** (room - 1) + 1 if room > 1 else 1]
        ids.append(-(2**63) + len(ids))


def test_a_body_of_exactly_the_byte_limit_is_one_message_and_one_byte_more_is_two() -> None:
    exact = _ids_filling(MAX_BODY_BYTES)
    over = _ids_filling(MAX_BODY_BYTES + 1)

    assert [len(body.encode()) for body in pack_rows_messages(RUN, exact, "RowError", None)] == [
        MAX_BODY_BYTES
    ]
    assert len(pack_rows_messages(RUN, over, "RowError", None)) == 2
