"""The data drugsync moves: drugs, planned ranges, range messages and run summaries."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from shared.describe import validation_problems
from shared.errors import InvalidMessage

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
MAX_TEXT_LENGTH = 10_000
# PostgreSQL bigint: every id the catalog can hold is valid input, negative ones included.
BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
DrugId = Annotated[int, Field(ge=BIGINT_MIN, le=BIGINT_MAX)]


class Drug(BaseModel):
    """One eligible row of the source table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: DrugId
    ndc: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=MAX_TEXT_LENGTH)
    generic_name: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    brand_name: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    strength: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    dosage_form: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    route: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    manufacturer: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    description: str | None = Field(None, max_length=MAX_TEXT_LENGTH)
    updated_at: datetime | None
    # When Postgres took the snapshot this row was read in: what orders two writes of the drug
    # (newest wins). A later snapshot holds every commit an earlier one does, whatever updated_at
    # says (a restored backup or a copied upstream timestamp can move it backwards).
    read_at: datetime | None = None


@dataclass(frozen=True)
class RowFailure:
    """One drug that could not be synced, with the class and text of its error."""

    drug_id: int
    error_class: str
    error: str


@dataclass(frozen=True)
class Fetched:
    """Rows read from the catalog: the valid drugs, and the ids whose rows are broken."""

    drugs: list[Drug]
    broken: list[RowFailure]


@dataclass(frozen=True)
class PlannedRange:
    """An inclusive id range holding `drug_count` eligible drugs when it was planned."""

    first_id: int
    last_id: int
    drug_count: int


MAX_ROWS_PER_MESSAGE = 1000
MAX_DEFERRALS = 20
MAX_DEFERRAL_DELAY_SECONDS = 900  # SQS's longest message delay: the most a deferred range waits
RunMode = Literal["full", "incremental", "rebuild"]


class RangeMessage(BaseModel):
    """Sync the eligible rows of first_id..last_id; a continuation names its range by range_first_id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    kind: Literal["range"] = "range"
    run_id: UUID
    first_id: DrugId
    last_id: DrugId
    expected_count: int = Field(ge=0, le=1_000_000)
    range_first_id: DrugId | None = None
    continuations: int = Field(0, ge=0, le=1_000_000)
    deferrals: int = Field(0, ge=0, le=MAX_DEFERRALS)
    # Drugs of the range already current in Redis, counted by the messages before this continuation:
    # the ledger records the sum once, with the range's first completion.
    drugs_skipped: int = Field(0, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _check_bounds(self) -> "RangeMessage":
        if self.first_id > self.last_id:
            raise ValueError(f"first_id {self.first_id} is greater than last_id {self.last_id}")
        # A range may span any part of the id space (gaps of any size); only its count is bounded.
        span = self.last_id - self.first_id + 1
        if self.expected_count > span:
            raise ValueError(
                f"expected_count {self.expected_count} exceeds the {span} ids"
                f" in {self.first_id}..{self.last_id}"
            )
        if self.range_first_id is not None and self.range_first_id > self.first_id:
            raise ValueError(f"range_first_id {self.range_first_id} is after first_id {self.first_id}")
        return self

    @property
    def range_key(self) -> int:
        """The ledger's key for the range this message (or continuation) belongs to."""
        return self.first_id if self.range_first_id is None else self.range_first_id

    @classmethod
    def for_range(cls, run_id: UUID, planned: PlannedRange) -> "RangeMessage":
        return cls(
            run_id=run_id,
            first_id=planned.first_id,
            last_id=planned.last_id,
            expected_count=planned.drug_count,
        )


class RowsMessage(BaseModel):
    """Sync exactly these ids: how rows isolated as poison travel to the DLQ and back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    kind: Literal["rows"] = "rows"
    run_id: UUID
    ids: list[DrugId] = Field(min_length=1, max_length=MAX_ROWS_PER_MESSAGE)
    error_class: str | None = Field(None, max_length=200)
    error: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _check_ids(self) -> "RowsMessage":
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ids must be distinct")
        return self


class SweepMessage(BaseModel):
    """Remove the documents of drugs that no longer qualify: the last stage of every run.

    Walks the key prefix with SCAN from `cursor` (a Redis SCAN cursor, an unsigned 64-bit number);
    a sweep that runs short of time continues itself from the cursor it reached. A cursor means
    something only to the server process that gave it (`server`, its run id): after a restart or
    a failover the walk starts again from 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    kind: Literal["sweep"] = "sweep"
    run_id: UUID
    cursor: int = Field(0, ge=0, le=2**64 - 1)
    server: str | None = Field(None, max_length=100)
    continuations: int = Field(0, ge=0, le=1_000_000)


class ChangesMessage(BaseModel):
    """Sync these changed ids of an incremental run: upsert the eligible, remove the others.

    Its ledger range is (smallest id, largest id, `total` ids); a continuation carries the ids not
    yet done, the same largest id, and names its range by range_first_id, as a range's does.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    kind: Literal["changes"] = "changes"
    run_id: UUID
    ids: list[DrugId] = Field(min_length=1, max_length=MAX_ROWS_PER_MESSAGE)
    total: int = Field(ge=1, le=MAX_ROWS_PER_MESSAGE)
    range_first_id: DrugId | None = None
    continuations: int = Field(0, ge=0, le=1_000_000)
    deferrals: int = Field(0, ge=0, le=MAX_DEFERRALS)
    drugs_skipped: int = Field(0, ge=0, le=MAX_ROWS_PER_MESSAGE)  # by the messages before this one

    @model_validator(mode="after")
    def _check_ids(self) -> "ChangesMessage":
        if any(a >= b for a, b in zip(self.ids, self.ids[1:], strict=False)):
            raise ValueError("ids must be distinct and in ascending order")
        if self.total < len(self.ids):
            raise ValueError(f"total {self.total} is less than the {len(self.ids)} ids")
        if self.range_first_id is not None and self.range_first_id > self.ids[0]:
            raise ValueError(f"range_first_id {self.range_first_id} is after the first id {self.ids[0]}")
        return self

    @property
    def range_key(self) -> int:
        return self.ids[0] if self.range_first_id is None else self.range_first_id

    @property
    def last_id(self) -> int:
        return self.ids[-1]


class RetireMessage(BaseModel):
    """Remove a generation readers no longer use: its index (documents kept), then its keys by SCAN.

    Sent once the alias has moved to the run's generation; continues itself from `cursor` (valid
    only on `server`, as for the sweep) when the invocation runs short of time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    kind: Literal["retire"] = "retire"
    run_id: UUID
    generation: int = Field(ge=0)
    cursor: int = Field(0, ge=0, le=2**64 - 1)
    server: str | None = Field(None, max_length=100)
    continuations: int = Field(0, ge=0, le=1_000_000)


def _message_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "range"))
    return str(getattr(value, "kind", "range"))


WorkMessage = Annotated[
    Annotated[RangeMessage, Tag("range")]
    | Annotated[RowsMessage, Tag("rows")]
    | Annotated[SweepMessage, Tag("sweep")]
    | Annotated[ChangesMessage, Tag("changes")]
    | Annotated[RetireMessage, Tag("retire")],
    Discriminator(_message_kind),
]
AnyMessage = RangeMessage | RowsMessage | SweepMessage | ChangesMessage | RetireMessage
_WORK_MESSAGE: TypeAdapter[AnyMessage] = TypeAdapter(WorkMessage)
MAX_BODY_BYTES = 16_384


def pack_rows_messages(
    run_id: UUID,
    ids: Sequence[int],
    error_class: str | None,
    error: str | None,
    max_rows: int = MAX_ROWS_PER_MESSAGE,
) -> list[str]:
    """Bodies of RowsMessages for the ids of one cause, each within max_rows ids and MAX_BODY_BYTES.

    Ids repeat nowhere; the cause is cut to what a RowsMessage holds.
    """
    template = RowsMessage(
        run_id=run_id,
        ids=[0],
        error_class=None if error_class is None else error_class[:200],
        error=None if error is None else error[:2000],
    )
    return [
        template.model_copy(update={"ids": chunk}).model_dump_json()
        for chunk in chunk_ids(template, dict.fromkeys(ids), max_rows)
    ]


def pack_changes(run_id: UUID, ids: Sequence[int]) -> list[list[int]]:
    """Sorted distinct ids in units of at most MAX_ROWS_PER_MESSAGE that fit a ChangesMessage body,
    even as its largest continuation (range_first_id and counters at their widest)."""
    widest = ChangesMessage(
        run_id=run_id,
        ids=[0],
        total=MAX_ROWS_PER_MESSAGE,
        range_first_id=BIGINT_MIN,
        continuations=1_000_000,
        deferrals=MAX_DEFERRALS,
    )
    return chunk_ids(widest, sorted(set(ids)), MAX_ROWS_PER_MESSAGE)


def chunk_ids(template: BaseModel, ids: Iterable[int], max_rows: int) -> list[list[int]]:
    """Consecutive chunks of ids, each within max_rows and, in `template` (holding ids=[0]), MAX_BODY_BYTES.

    Every body costs the same bytes but for its ids, each the length of its decimal form plus a comma.
    """
    fixed = len(template.model_dump_json().encode()) - len("0")
    chunks: list[list[int]] = []
    chunk: list[int] = []
    size = fixed - 1  # the first id needs no comma
    for drug_id in ids:
        cost = len(str(drug_id)) + 1
        if chunk and (len(chunk) >= max_rows or size + cost > MAX_BODY_BYTES):
            chunks.append(chunk)
            chunk, size = [], fixed - 1
        chunk.append(drug_id)
        size += cost
    if chunk:
        chunks.append(chunk)
    return chunks


def parse_message(body: str) -> AnyMessage:
    """A queue message body as a typed message, or InvalidMessage saying exactly what is wrong."""
    if len(body.encode()) > MAX_BODY_BYTES:
        raise InvalidMessage(f"message body of {len(body.encode()):,} bytes exceeds {MAX_BODY_BYTES:,}")
    try:
        return _WORK_MESSAGE.validate_json(body)
    except ValidationError as error:
        # The union's tags are not fields a sender wrote: leave them out.
        raise InvalidMessage(
            validation_problems(error, skip=("range", "rows", "sweep", "changes", "retire"))
        ) from error


class SyncRequest(BaseModel):
    """The producer's event: which run, how to cut the work, and an optional cap for proof-of-concept runs.

    mode "rebuild" writes a new generation (own prefix and index) that readers see only once it is
    complete and verified; a "full" run rebuilds by itself when the embedder or text template changed.
    `supersede` takes the one-writer claim from an active run instead of being refused.
    """

    model_config = ConfigDict(extra="forbid")

    range_size: int | None = Field(None, ge=1, le=100_000)
    max_drugs: int | None = Field(None, ge=1)
    # "incremental" syncs only what changed since the last complete run (shared/capture.py).
    mode: RunMode = "full"
    supersede: bool = False

    @model_validator(mode="after")
    def _check_incremental(self) -> "SyncRequest":
        if self.mode == "incremental" and (self.max_drugs is not None or self.range_size is not None):
            raise ValueError(
                "an incremental run syncs the changed ids: range_size and max_drugs do not apply"
            )
        return self


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
    mode: str = "full"
    generation: int | None = None
    superseded: list[UUID] = Field(default_factory=list)  # runs this one took the claim from
    # An incremental run: how many changed ids it syncs, and where they came from (capture | watermark).
    changed_ids: int | None = None
    changes_source: str | None = None


@dataclass(frozen=True)
class RangeResult:
    """What syncing one range did."""

    run_id: UUID
    first_id: int
    last_id: int
    drugs_written: int
    newly_done: bool


GenerationState = Literal["building", "live", "retiring"]


@dataclass(frozen=True)
class Generation:
    """One generation of the Redis copy: its own key prefix and index, and what embedded it.

    Number 0 is a deployment from before generations: its index bears the alias's own name.
    """

    number: int
    embedder: str
    dimension: int
    template_version: int
    prefix: str
    index: str
    run_id: str | None
    state: GenerationState
    created_at: str
    # Its layout (shared/layout.py); a registry written before layouts were settings holds JSON FLOAT32 HNSW.
    storage: str = "json"
    vector_type: str = "FLOAT32"
    algorithm: str = "HNSW"

    @property
    def layout_identity(self) -> tuple[str, str, str]:
        return (self.storage, self.vector_type, self.algorithm)
