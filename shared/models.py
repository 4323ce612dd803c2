"""The data drugsync moves: drugs, planned ranges, range messages and run summaries."""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The catalog's text fields, in the order they are stored and embedded.
TEXT_FIELDS = (
    "ndc",
    "name",
    "generic_name",
    "brand_name",
    "strength",
    "dosage_form",
    "route",
    "manufacturer",
    "description",
)
MESSAGE_VERSION = 1
MAX_TEXT_LENGTH = 10_000


class Drug(BaseModel):
    """One eligible row of the source table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=0)
    ndc: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH)
    generic_name: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    brand_name: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    strength: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    dosage_form: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    route: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    manufacturer: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    description: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    updated_at: datetime


@dataclass(frozen=True)
class PlannedRange:
    """An inclusive id range holding `drug_count` eligible drugs when it was planned."""

    first_id: int
    last_id: int
    drug_count: int


class RangeMessage(BaseModel):
    """Version 1 of the SQS message body: one range of one run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    run_id: UUID
    first_id: int = Field(ge=0, le=2**63 - 1)
    last_id: int = Field(ge=0, le=2**63 - 1)
    expected_count: int = Field(ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _check_bounds(self) -> "RangeMessage":
        if self.first_id > self.last_id:
            raise ValueError(f"first_id {self.first_id} is greater than last_id {self.last_id}")
        if self.expected_count > self.last_id - self.first_id + 1:
            raise ValueError(
                f"expected_count {self.expected_count} exceeds the {self.last_id - self.first_id + 1}"
                f" ids in {self.first_id}..{self.last_id}"
            )
        return self

    @classmethod
    def for_range(cls, run_id: UUID, planned: PlannedRange) -> "RangeMessage":
        return cls(
            run_id=run_id,
            first_id=planned.first_id,
            last_id=planned.last_id,
            expected_count=planned.drug_count,
        )


class SyncRequest(BaseModel):
    """The producer's event: how to cut the work, and an optional cap for proof-of-concept runs."""

    model_config = ConfigDict(extra="forbid")

    range_size: int | None = Field(None, ge=1, le=100_000)
    max_drugs: int | None = Field(None, ge=1)


class SyncSummary(BaseModel):
    """What the producer reports once a run is planned and enqueued."""

    run_id: UUID
    eligible_drugs: int
    ranges: int
    messages_sent: int
    range_size: int
    max_drugs: int | None
    plan_seconds: float
    enqueue_seconds: float


@dataclass(frozen=True)
class RangeResult:
    """What syncing one range did."""

    run_id: UUID
    first_id: int
    last_id: int
    drugs_written: int
    newly_done: bool
