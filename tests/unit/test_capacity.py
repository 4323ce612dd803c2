from console.capacity import Measured, make_plan, render_plan
from shared.redis_errors import judge_eviction_policy

MEASURED = Measured(
    sample=500,
    client_seconds_per_drug=0.001,
    server_seconds_per_drug=0.002,
    json_bytes_per_drug=14_000,
    index_bytes_per_drug=2_000,
    text_chars_per_drug=400,
    hash_bytes_per_drug=2_000,
)


def _plan(
    drugs: int = 494_000, concurrency: int = 10, redis_limit: int = 64 * 2**30, free: int = 90, titan=False,
    eviction: tuple[str, str | None] = ("noeviction", None),
):  # fmt: skip
    return make_plan(
        drugs, 1000, concurrency, MEASURED,
        embedder="amazon.titan-embed-text-v2:0-1024" if titan else "hashing-v1-384", dimension=384,
        consumer_memory_mb=1024, consumer_timeout=120, redis_limit=(redis_limit, "maxmemory"), postgres_free=free,
        redis_eviction=eviction,
    )  # fmt: skip


def test_a_plan_that_fits() -> None:
    plan = _plan()
    assert plan.ranges == 494
    assert plan.bottleneck == "Redis index insertion (one server)"  # 500 docs/s < 10 consumers x 1000/s
    assert round(plan.wall_seconds) == 988
    assert plan.redis_json_bytes == 494_000 * 16_000
    assert plan.redis_hash_bytes == 494_000 * 4_000
    assert plan.warnings == []
    assert "fits: no warnings" in render_plan(plan)


def test_warnings_when_redis_or_postgres_cannot_hold_the_run() -> None:
    plan = _plan(redis_limit=2 * 2**30, free=5)
    assert any("the run will not fit" in w for w in plan.warnings)
    assert any("12 Postgres connections needed, 5 free" in w for w in plan.warnings)
    assert "WARNING:" in render_plan(plan)


def test_embedding_tokens_are_priced_for_titan_only() -> None:
    assert _plan().costs_usd["embedding"] == 0.0
    # 494,000 drugs x 400 chars / 4 chars a token = 49.4 M tokens at $0.00002 per 1k
    assert _plan(titan=True).costs_usd["embedding"] == 0.988


def test_the_plan_names_the_eviction_policy_and_warns_when_documents_could_be_evicted() -> None:
    policy = "volatile-lru"
    warning = judge_eviction_policy(policy, allow_eviction=False)
    assert warning is not None

    plan = _plan(eviction=(policy, warning))

    rendered = render_plan(plan)
    assert "Redis eviction: maxmemory-policy volatile-lru" in rendered
    assert f"WARNING: {warning}" in rendered
    assert plan.to_json()["redis_eviction_policy"] == "volatile-lru"
    assert "maxmemory-policy noeviction" in render_plan(_plan())
    assert _plan().warnings == []


def _api_plan(texts_per_request: int | None, quota_rpm: int | None):
    return make_plan(
        494_000, 1000, 10, MEASURED, embedder="amazon.titan-embed-text-v2:0-1024", dimension=1024,
        consumer_memory_mb=1024, consumer_timeout=120, redis_limit=(64 * 2**30, "maxmemory"), postgres_free=90,
        redis_eviction=("noeviction", None), texts_per_request=texts_per_request, quota_rpm=quota_rpm,
    )  # fmt: skip


def test_an_embedding_quota_bounds_the_run_and_is_named_as_its_bottleneck() -> None:
    # Titan V2, one text a request, at 1,500 requests a minute: 494,000 requests take 329.3 minutes,
    # however many consumers (the consumers and Redis alone would take 988 s)
    plan = _api_plan(texts_per_request=1, quota_rpm=1_500)
    assert plan.embedding_requests == 494_000
    assert plan.embedding_bound_seconds == 494_000 / 1_500 * 60
    assert plan.bottleneck == "the embedding quota (1,500 requests/min)"
    assert round(plan.wall_seconds) == 19_760
    assert "494,000 requests / 1,500 per minute = at least 329.3 min" in render_plan(plan)


def test_a_provider_that_batches_needs_fewer_requests_and_may_not_be_the_bound() -> None:
    # 96 texts a request (Cohere Embed): 5,146 requests, 3.4 min at 1,500/min, under Redis's 988 s
    plan = _api_plan(texts_per_request=96, quota_rpm=1_500)
    assert plan.embedding_requests == 5_146
    assert plan.bottleneck == "Redis index insertion (one server)"
    assert round(plan.wall_seconds) == 988


def test_an_api_embedder_without_a_quota_is_warned_about_and_a_local_one_needs_no_requests() -> None:
    unbounded = _api_plan(texts_per_request=1, quota_rpm=None)
    assert unbounded.embedding_bound_seconds is None
    assert any("DRUGSYNC_EMBEDDING_QUOTA_RPM" in w for w in unbounded.warnings)
    local = _api_plan(texts_per_request=None, quota_rpm=1_500)
    assert (local.embedding_requests, local.embedding_bound_seconds) == (0, None)
    assert "embedding API: none" in render_plan(local)


def test_titan_embeds_one_text_a_request_and_the_hashing_embedder_none() -> None:
    from shared.embedders.bedrock import TitanEmbedder
    from shared.embedders.hashing import HashingEmbedder

    titan = TitanEmbedder(None, "amazon.titan-embed-text-v2:0", 1024, 256, 8)  # type: ignore[arg-type]
    assert titan.texts_per_request == 1
    assert HashingEmbedder(32, 256).texts_per_request is None
