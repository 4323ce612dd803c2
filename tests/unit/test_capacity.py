from dataclasses import replace

from console.capacity import LayoutCost, Measured, embedding_requests, make_plan, render_plan
from shared.redis_errors import judge_eviction_policy

MEASURED = Measured(
    sample=500,
    client_seconds_per_drug=0.001,
    server_seconds_per_drug=0.002,
    text_chars_per_drug=400,
    layouts=(
        LayoutCost("json FLOAT32 HNSW", 14_000, 2_000),
        LayoutCost("json FLOAT16 HNSW", 14_000, 1_200),
        LayoutCost("hash FLOAT32 HNSW", 2_000, 2_000),
        LayoutCost("hash FLOAT16 HNSW", 1_200, 1_200),
    ),
)


def _plan(
    drugs: int = 494_000, concurrency: int = 10, redis_limit: int = 64 * 2**30, free: int = 90, titan=False,
    eviction: tuple[str, str | None] = ("noeviction", None), measured: Measured = MEASURED,
):  # fmt: skip
    return make_plan(
        drugs, 1000, concurrency, measured,
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


def _api_plan(texts_per_request: int | None, quota_rpm: int | None, chunk_size: int | None = None):
    return make_plan(
        494_000, 1000, 10, MEASURED, embedder="amazon.titan-embed-text-v2:0-1024", dimension=1024,
        consumer_memory_mb=1024, consumer_timeout=120, redis_limit=(64 * 2**30, "maxmemory"), postgres_free=90,
        redis_eviction=("noeviction", None), texts_per_request=texts_per_request, quota_rpm=quota_rpm,
        chunk_size=chunk_size,
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
    # 96 texts a request (Cohere Embed), a request never spanning two ranges of 1,000: 11 a range,
    # 5,434 requests, 3.6 min at 1,500/min, under Redis's 988 s
    plan = _api_plan(texts_per_request=96, quota_rpm=1_500)
    assert plan.embedding_requests == 5_434
    assert plan.bottleneck == "Redis index insertion (one server)"
    assert round(plan.wall_seconds) == 988


def test_requests_are_counted_per_chunk_as_consumers_send_them() -> None:
    # consumers embed a range of 1,000 in chunks of 256 (256, 256, 256, 232), each sent as requests of
    # at most 96 (3 + 3 + 3 + 3): 12 a range, 5,928 for 494 ranges, not 494,000 / 96
    assert _api_plan(texts_per_request=96, quota_rpm=1_500, chunk_size=256).embedding_requests == 5_928
    assert embedding_requests(2_500, 1_000, 256, 96) == 2 * 12 + 6  # the last range: 256, 244 -> 3 + 3
    assert embedding_requests(494_000, 1_000, 256, 1) == 494_000
    assert embedding_requests(494_000, 1_000, 256, None) == 0


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


def test_the_plan_sizes_redis_for_the_chosen_layout_and_names_the_others_cost() -> None:
    hashed = replace(MEASURED, layouts=(MEASURED.layouts[2], *MEASURED.layouts[:2], MEASURED.layouts[3]))
    plan = _plan(measured=hashed)

    assert (plan.layout, plan.redis_bytes) == ("hash FLOAT32 HNSW", 494_000 * 4_000)
    rendered = render_plan(plan)
    assert "as hash FLOAT32 HNSW (index included, the chosen layout)" in rendered
    lines = {line.strip().split("  ")[0]: line for line in rendered.splitlines() if " KB/document" in line}
    assert set(lines) == {"json FLOAT32 HNSW", "json FLOAT16 HNSW", "hash FLOAT32 HNSW", "hash FLOAT16 HNSW"}
    for layout, kb in (("json FLOAT32 HNSW", 15.6), ("json FLOAT16 HNSW", 14.8), ("hash FLOAT16 HNSW", 2.3)):
        assert f"{kb} KB/document" in lines[layout]
    assert "3.9 KB/document" in lines["hash FLOAT32 HNSW"]
    assert lines["hash FLOAT32 HNSW"].endswith("<- chosen")
    assert rendered.count("<- chosen") == 1


def test_a_run_that_fits_only_in_a_smaller_layout_says_which() -> None:
    plan = _plan(redis_limit=3 * 2**30)  # JSON FLOAT32 needs 7.4 GiB, HASH FLOAT16 1.1 GiB
    warning = next(w for w in plan.warnings if "will not fit" in w)
    assert "as json FLOAT32 HNSW" in warning
    assert "it would as hash FLOAT32 HNSW, hash FLOAT16 HNSW" in warning


def test_a_layout_the_server_refused_is_shown_as_refused() -> None:
    refused = replace(MEASURED, layouts=(*MEASURED.layouts[:3], LayoutCost("hash FLOAT16 HNSW", None, None)))
    plan = _plan(measured=refused)
    assert plan.redis_bytes_by_layout["hash FLOAT16 HNSW"] is None
    assert "hash FLOAT16 HNSW  refused by this server" in render_plan(plan)
