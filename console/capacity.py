"""`drugsync plan`: before a run, what it will take (time, memory, connections, money) and whether it fits.

Costs per drug are measured here, on a sample of the table: embedding and encoding in this process,
and insertion into a scratch index of the chosen layout on the Redis server; the memory of the other
layouts (JSON/HASH, FLOAT32/FLOAT16, same algorithm) is measured on the same sample beside it, so an
operator sees the trade. Prices are assumptions, printed.
"""

import math
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from shared.documents import build_document, build_embedding_text
from shared.errors import ConfigError
from shared.layout import StorageLayout
from shared.models import Drug
from shared.ports import Embedder
from shared.redis_store import RedisDocumentStore

SAMPLE_SIZE = 500
# Price assumptions (us-east-1, on demand, no free tier), printed with every plan.
PRICES = {
    "lambda_gb_second_arm64_usd": 0.0000133334,
    "lambda_request_usd": 0.0000002,
    "sqs_request_usd": 0.0000004,
    "titan_v2_per_1k_tokens_usd": 0.00002,
}
CHARS_PER_TOKEN = 4.0  # a common rule of thumb for English text
SQS_REQUESTS_PER_MESSAGE = 3  # send, receive, delete
# The layouts whose memory a plan shows beside the chosen one's (with the chosen algorithm).
COMPARED = (("json", "FLOAT32"), ("json", "FLOAT16"), ("hash", "FLOAT32"), ("hash", "FLOAT16"))


@dataclass(frozen=True)
class LayoutCost:
    """Bytes per drug of one layout, measured: its document (MEMORY USAGE) and its share of the index.
    None when the server refused the layout (MemoryDB has no FLOAT16)."""

    layout: str
    document_bytes: float | None
    index_bytes: float | None

    @property
    def total(self) -> float | None:
        if self.document_bytes is None or self.index_bytes is None:
            return None
        return self.document_bytes + self.index_bytes


@dataclass(frozen=True)
class Measured:
    """Per-drug costs measured on a sample; layouts[0] is the chosen layout's memory."""

    sample: int
    client_seconds_per_drug: float
    server_seconds_per_drug: float
    text_chars_per_drug: float
    layouts: tuple[LayoutCost, ...]

    def bytes_of(self, layout: str) -> float | None:
        return next((cost.total for cost in self.layouts if cost.layout == layout), None)


def measure(sample: list[Drug], embedder: Embedder, store: RedisDocumentStore) -> Measured:
    """Embed and encode the sample here; insert it into scratch indexes on the server; clean up."""
    began = time.perf_counter()
    texts = [build_embedding_text(drug) for drug in sample]
    vectors = embedder.embed_texts(texts)
    documents = [(d.id, build_document(d, v, embedder.name)) for d, v in zip(sample, vectors, strict=True)]
    client_seconds = time.perf_counter() - began
    chosen, server_seconds = _insert(documents, embedder.dimension, store, store.layout, refusable=False)
    others = [
        _insert(documents, embedder.dimension, store, other, refusable=True)[0]
        for other in (replace(store.layout, storage=s, vector_type=v) for s, v in COMPARED)  # type: ignore[arg-type]
        if other.identity != store.layout.identity
    ]
    count = max(len(sample), 1)
    return Measured(
        sample=len(sample),
        client_seconds_per_drug=client_seconds / count,
        server_seconds_per_drug=server_seconds / count,
        text_chars_per_drug=sum(len(t) for t in texts) / count,
        layouts=(chosen, *others),
    )


def _insert(
    documents: list[tuple[int, dict[str, Any]]], dimension: int, store: RedisDocumentStore,
    layout: StorageLayout, refusable: bool,
) -> tuple[LayoutCost, float]:  # fmt: skip
    """The documents written into a scratch index of `layout`: its memory per drug, and seconds.
    A layout compared (refusable) that the server does not have is shown as such; the chosen one raises."""
    name = f"drugsync-plan-{uuid.uuid4().hex[:8]}"
    scratch = store.at(f"{name}:", name, layout)
    try:
        try:
            scratch.ensure_index(dimension)
        except ConfigError:
            if not refusable:
                raise
            return LayoutCost(layout.describe(), None, None), 0.0
        began = time.perf_counter()
        scratch.write_documents(documents)
        scratch.wait_until_indexed(len(documents))
        seconds = time.perf_counter() - began
        document_bytes, index_bytes = scratch.memory_per_document(len(documents))
    finally:
        scratch.clear()
    return LayoutCost(layout.describe(), document_bytes, index_bytes), seconds


@dataclass
class Plan:
    """What a run of `drugs` drugs needs, and the warnings when it will not fit."""

    drugs: int
    ranges: int
    range_size: int
    max_concurrency: int
    dimension: int
    embedder: str
    measured: Measured
    wall_seconds: float
    bottleneck: str
    embedding_requests: int
    embedding_quota_rpm: int | None
    embedding_bound_seconds: float | None
    layout: str
    redis_bytes: float  # in the chosen layout, index included
    redis_bytes_by_layout: dict[str, float | None]  # None: the server refused that layout
    redis_json_bytes: float | None  # JSON and HASH with FLOAT32 vectors and the chosen algorithm
    redis_hash_bytes: float | None
    redis_limit_bytes: int
    redis_limit_source: str
    redis_eviction_policy: str
    postgres_connections_needed: int
    postgres_connections_free: int
    costs_usd: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "prices": PRICES}


def embedding_requests(drugs: int, range_size: int, chunk_size: int, texts_per_request: int | None) -> int:
    """Requests a run sends: each range is embedded in chunks of `chunk_size`, and each chunk in
    requests of up to `texts_per_request` texts (0 for a local embedder)."""
    if not texts_per_request or not drugs:
        return 0

    def per_range(size: int) -> int:
        whole, rest = divmod(size, chunk_size)
        return whole * math.ceil(chunk_size / texts_per_request) + math.ceil(rest / texts_per_request)

    ranges, last = divmod(drugs, range_size)
    return ranges * per_range(range_size) + per_range(last)


def make_plan(
    drugs: int, range_size: int, max_concurrency: int, measured: Measured, *, embedder: str, dimension: int,
    consumer_memory_mb: int, consumer_timeout: float, redis_limit: tuple[int, str], postgres_free: int,
    redis_eviction: tuple[str, str | None], texts_per_request: int | None = None,
    quota_rpm: int | None = None, chunk_size: int | None = None,
) -> Plan:  # fmt: skip
    """Turn measured per-drug costs into the figures for a run of `drugs` drugs.

    redis_eviction is the server's maxmemory-policy and the warning judge_eviction_policy gave it.
    texts_per_request is what one request to the embedding API carries (None: a local embedder, no
    API), chunk_size the texts a consumer embeds at once (DRUGSYNC_EMBED_BATCH_SIZE: a request never
    spans two); quota_rpm the account's quota of those requests per minute. The run goes no faster than
    its slowest stage: the consumers, the one Redis server's index insertion, or the quota.
    """
    ranges = math.ceil(drugs / range_size) if drugs else 0
    requests = embedding_requests(drugs, range_size, chunk_size or range_size, texts_per_request)
    rates = {  # drugs per second each stage allows
        "consumers": max_concurrency / measured.client_seconds_per_drug,
        "Redis index insertion (one server)": 1 / measured.server_seconds_per_drug,
    }
    embedding_bound = requests / quota_rpm * 60 if requests and quota_rpm else None
    if embedding_bound:
        rates[f"the embedding quota ({quota_rpm:,} requests/min)"] = drugs / embedding_bound
    bottleneck = min(rates, key=lambda stage: rates[stage])
    rate = rates[bottleneck]
    gb_seconds = drugs * (measured.client_seconds_per_drug + measured.server_seconds_per_drug)
    gb_seconds *= consumer_memory_mb / 1024
    tokens = drugs * measured.text_chars_per_drug / CHARS_PER_TOKEN
    costs = {
        "lambda": gb_seconds * PRICES["lambda_gb_second_arm64_usd"] + ranges * PRICES["lambda_request_usd"],
        "sqs": ranges * SQS_REQUESTS_PER_MESSAGE * PRICES["sqs_request_usd"],
        "embedding": tokens / 1000 * PRICES["titan_v2_per_1k_tokens_usd"] if "titan" in embedder else 0.0,
    }
    chosen = measured.layouts[0]
    algorithm = chosen.layout.split()[-1]
    by_layout = {cost.layout: None if cost.total is None else drugs * cost.total for cost in measured.layouts}
    plan = Plan(
        drugs=drugs, ranges=ranges, range_size=range_size, max_concurrency=max_concurrency,
        dimension=dimension, embedder=embedder, measured=measured,
        wall_seconds=drugs / rate if drugs else 0.0, bottleneck=bottleneck,
        embedding_requests=requests, embedding_quota_rpm=quota_rpm, embedding_bound_seconds=embedding_bound,
        layout=chosen.layout, redis_bytes=drugs * (chosen.total or 0.0), redis_bytes_by_layout=by_layout,
        redis_json_bytes=by_layout.get(f"json FLOAT32 {algorithm}"),
        redis_hash_bytes=by_layout.get(f"hash FLOAT32 {algorithm}"),
        redis_limit_bytes=redis_limit[0], redis_limit_source=redis_limit[1],
        redis_eviction_policy=redis_eviction[0],
        postgres_connections_needed=max_concurrency + 2, postgres_connections_free=postgres_free,
        costs_usd={name: round(value, 4) for name, value in costs.items()},
    )  # fmt: skip
    plan.warnings = _warnings(plan, consumer_timeout)
    if redis_eviction[1]:
        plan.warnings.append(redis_eviction[1])
    return plan


def _warnings(plan: Plan, consumer_timeout: float) -> list[str]:
    warnings = []
    if plan.redis_limit_bytes and plan.redis_bytes > plan.redis_limit_bytes:
        smaller = [
            name
            for name, size in plan.redis_bytes_by_layout.items()
            if size and size <= plan.redis_limit_bytes
        ]
        warnings.append(
            f"Redis needs {_gib(plan.redis_bytes)} as {plan.layout} but {plan.redis_limit_source} is"
            f" {_gib(plan.redis_limit_bytes)}: the run will not fit"
            + (
                f" (it would as {', '.join(smaller)}: DRUGSYNC_STORAGE, DRUGSYNC_VECTOR_TYPE)"
                if smaller
                else ""
            )
        )
    if plan.embedding_requests and plan.embedding_quota_rpm is None:
        warnings.append(
            f"{plan.embedding_requests:,} embedding requests and no quota set: the wall time ignores the"
            " API's limit; set DRUGSYNC_EMBEDDING_QUOTA_RPM to the account's quota (Service Quotas)"
        )
    if plan.postgres_connections_needed > plan.postgres_connections_free:
        warnings.append(
            f"{plan.postgres_connections_needed} Postgres connections needed,"
            f" {plan.postgres_connections_free} free: lower maxConcurrency or raise max_connections"
        )
    range_seconds = plan.range_size * (
        plan.measured.client_seconds_per_drug + plan.measured.server_seconds_per_drug
    )
    if range_seconds > consumer_timeout / 2:
        warnings.append(
            f"a range of {plan.range_size} takes ~{range_seconds:.0f}s, over half the {consumer_timeout:.0f}s"
            " consumer timeout: ranges will continue across invocations; lower the range size"
        )
    return warnings


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def render_plan(plan: Plan) -> str:
    m = plan.measured
    lines = [
        f"plan for {plan.drugs:,} drugs: {plan.ranges:,} ranges of <= {plan.range_size:,}"
        f" ({plan.ranges:,} messages)",
        f"  measured on {m.sample} drugs: {m.client_seconds_per_drug * 1000:.2f} ms/drug in a consumer"
        f" ({plan.embedder}, {plan.dimension}d), {m.server_seconds_per_drug * 1000:.2f} ms/drug"
        " Redis insertion",
        f"  wall time at max concurrency {plan.max_concurrency}: ~{_duration(plan.wall_seconds)}"
        f" (bound by {plan.bottleneck}; HNSW insertion slows as the index grows, so allow up to 2x)",
        _embedding_line(plan),
        f"  Redis memory: {_gib(plan.redis_bytes)} as {plan.layout} (index included, the chosen layout);"
        f" {plan.redis_limit_source} {_gib(plan.redis_limit_bytes)}",
        *_layout_lines(plan),
        f"  Redis eviction: maxmemory-policy {plan.redis_eviction_policy}",
        f"  Postgres connections: {plan.postgres_connections_needed} needed,"
        f" {plan.postgres_connections_free} free",
        "  cost estimate (USD): "
        + ", ".join(f"{name} {value:.4f}" for name, value in plan.costs_usd.items())
        + f"  total {sum(plan.costs_usd.values()):.4f}",
        "  price assumptions: " + ", ".join(f"{name} {value}" for name, value in PRICES.items()),
    ]
    lines += [f"WARNING: {warning}" for warning in plan.warnings] or ["fits: no warnings"]
    return "\n".join(lines)


def _layout_lines(plan: Plan) -> list[str]:
    """One line per layout measured, so the trade is in sight: memory per document and for the run."""
    lines = []
    for cost in plan.measured.layouts:
        chosen = "  <- chosen" if cost.layout == plan.layout else ""
        total = plan.redis_bytes_by_layout.get(cost.layout)
        if cost.total is None or total is None:
            lines.append(f"    {cost.layout:<18} refused by this server{chosen}")
            continue
        document, index = (cost.document_bytes or 0) / 1024, (cost.index_bytes or 0) / 1024
        lines.append(
            f"    {cost.layout:<18} {cost.total / 1024:6.1f} KB/document ({document:.1f} KB document"
            f" + {index:.1f} KB index)  {_gib(total)} in all{chosen}"
        )
    return lines


def _embedding_line(plan: Plan) -> str:
    if not plan.embedding_requests:
        return f"  embedding API: none ({plan.embedder} embeds in the consumer)"
    if plan.embedding_quota_rpm is None or plan.embedding_bound_seconds is None:
        return f"  embedding API: {plan.embedding_requests:,} requests; no quota set, so no bound"
    return (
        f"  embedding API: {plan.embedding_requests:,} requests / {plan.embedding_quota_rpm:,} per minute"
        f" = at least {_duration(plan.embedding_bound_seconds)}, however many consumers"
    )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f} min"
