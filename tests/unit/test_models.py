import uuid

import pytest
from pydantic import ValidationError

from shared.describe import describe_error
from shared.models import PlannedRange, RangeMessage

RUN = uuid.UUID("00000000-0000-4000-8000-000000000001")


def test_round_trip_of_a_planned_range() -> None:
    # GIVEN a planned range WHEN it becomes a message body and is parsed back THEN nothing changes
    message = RangeMessage.for_range(RUN, PlannedRange(10, 20, 5))
    assert RangeMessage.model_validate_json(message.model_dump_json()) == message
    assert message.version == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"version": 2, "run_id": str(RUN), "first_id": 1, "last_id": 2, "expected_count": 1}, "version"),
        ({"version": 1, "run_id": "nope", "first_id": 1, "last_id": 2, "expected_count": 1}, "run_id"),
        (
            {"version": 1, "run_id": str(RUN), "first_id": 5, "last_id": 2, "expected_count": 1},
            "greater than",
        ),
        ({"version": 1, "run_id": str(RUN), "first_id": 1, "last_id": 2, "expected_count": 3}, "exceeds"),
        (
            {"version": 1, "run_id": str(RUN), "first_id": -(2**63) - 1, "last_id": 2, "expected_count": 1},
            "first_id",
        ),
        ({"version": 1, "run_id": str(RUN), "first_id": 1, "last_id": 2**63, "expected_count": 1}, "last_id"),
        ({"version": 1, "run_id": str(RUN), "first_id": 1, "last_id": 2}, "expected_count"),
        (
            {"version": 1, "run_id": str(RUN), "first_id": 1, "last_id": 2, "expected_count": 1, "x": 1},
            "x: Extra inputs",
        ),
    ],
)
def test_invalid_messages_are_rejected_with_the_field_named(body: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RangeMessage.model_validate(body)
    assert reason in describe_error(caught.value)
