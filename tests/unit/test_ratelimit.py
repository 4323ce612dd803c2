"""The quota limiter's client side and the exact window count the measurements rely on."""

import itertools
from typing import Any, cast

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.quota import minute_rates
from shared.embedders.hashing import HashingEmbedder
from shared.embedders.simulated import SimulatedApiEmbedder
from shared.errors import QuotaWaitTooLong
from shared.ratelimit import MAX_WAIT_SECONDS, RedisRequestLimiter, interval_us, most_in_window
from shared.settings import Settings
from shared.wiring import build_limiter, quota_key
from tests.fakes import ScriptedRedis


def _limiter(client: ScriptedRedis, slept: list[float]) -> RedisRequestLimiter:
    return RedisRequestLimiter(cast(redis.Redis, client), "quota", 3_000, 100_000, sleep=slept.append)


def test_acquire_sleeps_exactly_the_wait_the_script_gives() -> None:
    slept: list[float] = []
    client = ScriptedRedis([1, 0, 10], [1, 250_000, 20])
    limiter = _limiter(client, slept)

    limiter.acquire(1, 70)
    limiter.acquire(1, 70)

    assert slept == [0.25]  # no sleep at all when the slot is now
    assert client.calls[0]["args"][:5] == [1, 70, 20_000, 600, int(MAX_WAIT_SECONDS * 1_000_000)]


def test_a_refused_reservation_raises_with_the_wait_and_sleeps_not() -> None:
    slept: list[float] = []
    limiter = _limiter(ScriptedRedis([0, 42_000_000, 99]), slept)
    with pytest.raises(QuotaWaitTooLong) as refused:
        limiter.acquire(1, 70)
    assert refused.value.wait_seconds == 42.0
    assert not refused.value.retryable
    assert slept == []


@pytest.mark.parametrize(("budget", "max_wait_us"), [(-3.0, 0), (12.5, 12_500_000), (1e9, 900_000_000)])
def test_the_wait_budget_is_what_the_script_may_reserve_within(budget: float, max_wait_us: int) -> None:
    client = ScriptedRedis([1, 0, 1])
    limiter = _limiter(client, [])
    limiter.wait_budget = lambda: budget
    limiter.acquire(1, 1)
    assert client.calls[0]["args"][4] == max_wait_us


@pytest.mark.parametrize(("per_minute", "microseconds"), [(3_000, 20_000), (7, 8_571_429), (60_000_000, 1)])
def test_intervals_round_up_so_no_slot_comes_early(per_minute: int, microseconds: int) -> None:
    assert interval_us(per_minute) == microseconds


@pytest.mark.parametrize(
    ("slots", "window", "most"),
    [
        ([], 10, 0),
        ([5], 10, 1),
        ([0, 10, 20], 10, 1),  # half-open: a slot at a + window is the next window's
        ([0, 9, 10, 19], 10, 2),
        ([30, 0, 1, 2, 31], 10, 3),  # unsorted input
        ([0, 0, 0, 5, 100], 10, 4),
    ],
)
def test_most_in_window_counts_half_open_windows(slots: list[int], window: int, most: int) -> None:
    assert most_in_window(slots, window) == most


@given(st.lists(st.integers(0, 200), max_size=40), st.integers(1, 50))
def test_most_in_window_matches_trying_every_start(slots: list[int], window: int) -> None:
    brute = max((sum(a <= s < a + window for s in slots) for a in range(-window, 260)), default=0)
    assert most_in_window(slots, window) == brute


def _settings(**values: Any) -> Settings:
    return Settings.model_validate(values)


def test_an_api_embedder_with_a_quota_gets_the_shared_limiter() -> None:
    settings = _settings(embedder="simulated", embedding_quota_rpm=1_500, embedding_quota_tpm=300_000)
    embedder = SimulatedApiEmbedder(64, 256, 0.0, 1, 8)
    limiter = build_limiter(settings, embedder, cast(redis.Redis, ScriptedRedis()))
    assert limiter is not None
    assert (limiter.requests_per_minute, limiter.tokens_per_minute) == (1_500, 300_000)
    assert limiter.key == quota_key(settings)


def test_no_quota_or_a_local_embedder_gets_no_limiter() -> None:
    client = cast(redis.Redis, ScriptedRedis())
    api = SimulatedApiEmbedder(64, 256, 0.0, 1, 8)
    assert build_limiter(_settings(embedder="simulated"), api, client) is None
    local = HashingEmbedder(64, 256)
    assert build_limiter(_settings(embedding_quota_rpm=1_500), local, client) is None


def test_the_quota_key_is_per_region_and_model_not_per_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    keys = {
        quota_key(_settings(embedder="bedrock", embedding_dim=dim, index_name=index, key_prefix=prefix))
        for dim, index, prefix in itertools.product((256, 1024), ("idx:a", "idx:b"), ("a:", "b:"))
    }
    assert keys == {"drugsync:quota:eu-west-1:amazon.titan-embed-text-v2:0"}
    other = _settings(embedder="bedrock", embedding_dim=1024, bedrock_model_id="cohere.embed-english-v3")
    assert quota_key(other) == "drugsync:quota:eu-west-1:cohere.embed-english-v3"


def test_an_openai_compatible_quota_is_keyed_by_its_endpoint_and_model() -> None:
    def key(base_url: str, model: str) -> str:
        return quota_key(_settings(embedder="openai", openai_base_url=base_url, openai_model=model))

    assert key("https://api.openai.com/v1", "text-embedding-3-small") == (
        "drugsync:quota:openai:api.openai.com:text-embedding-3-small"
    )
    assert key("https://api.openai.com/v1", "m") != key("http://tei.internal:8080/v1", "m")
    assert key("https://api.openai.com/v1", "a") != key("https://api.openai.com/v1", "b")
    assert key("https://user:secret@tei.internal:8080/v1", "m") == "drugsync:quota:openai:tei.internal:8080:m"


def test_minute_rates_count_each_full_minute_from_the_first_admission() -> None:
    # 150 s at 10 a second, with the second minute missing 6 s of admissions
    slots = [i * 100_000 for i in range(1500) if not 70 <= i // 10 < 76]
    assert minute_rates(slots, 600) == [1.0, 0.9]  # the last half minute is not a full one
    assert minute_rates([], 600) == []
