"""The shared embedding quota against the real Redis: many callers, one limit, exact counts."""

import itertools
import multiprocessing
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from console.local_stack import StackState
from console.status import gather_quota, render_quota
from shared.errors import UnavailableError
from shared.ratelimit import (
    MICROSECONDS,
    RedisRequestLimiter,
    admissions_per_second,
    enable_admission_log,
    most_in_window,
    read_admission_log,
)
from shared.redis_store import connect_redis
from shared.settings import Settings
from shared.wiring import quota_key
from tests.conftest import Isolated

pytestmark = pytest.mark.integration
MINUTE_US = 60 * MICROSECONDS


def _key() -> str:
    return f"test:quota:{uuid.uuid4().hex[:8]}"


def _reserve_many(url: str, key: str, rpm: int, tpm: int | None, count: int, tokens: int) -> None:
    """Reserve `count` slots without sleeping: slots far ahead cover minutes in a second of real time."""
    limiter = RedisRequestLimiter(connect_redis(url), key, rpm, tpm)
    for _ in range(count):
        assert limiter.reserve(1, tokens).admitted


def _slots(client: redis.Redis, key: str, start: int) -> list[int]:
    slots, _ = read_admission_log(client, key, start)
    return slots


def test_threads_hammering_one_quota_never_exceed_it_in_any_minute(test_env: Isolated) -> None:
    # GIVEN a quota of 300 requests a minute and 12 threads reserving 800 slots (about 2.7 minutes)
    url, key, quota = test_env.env["REDIS_URL"], _key(), 300
    client = connect_redis(url)
    start = enable_admission_log(client, key, 10_000)
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda _: _reserve_many(url, key, quota, None, 800 // 12 + 1, 1), range(12)))
    # THEN every reservation was logged and no 60 s window holds more than the quota, yet one holds it all
    slots = _slots(client, key, start)
    assert len(slots) == 12 * (800 // 12 + 1)
    assert most_in_window(slots, MINUTE_US) == quota
    # AND the slots are evenly spaced: no burst, no gap
    ordered = sorted(slots)
    gaps = {b - a for a, b in itertools.pairwise(ordered)}
    assert gaps == {MINUTE_US // quota}
    # AND the quota's state carries no TTL: a volatile-* eviction policy never forgets the line
    assert client.ttl(key) == -1


def test_processes_hammering_one_quota_never_exceed_it_in_any_minute(test_env: Isolated) -> None:
    url, key, quota = test_env.env["REDIS_URL"], _key(), 240
    client = connect_redis(url)
    start = enable_admission_log(client, key, 10_000)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_reserve_many, args=(url, key, quota, None, 150, 1)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0] * 4
    slots = _slots(client, key, start)
    assert len(slots) == 600
    assert most_in_window(slots, MINUTE_US) == quota


def test_the_tokens_quota_binds_when_it_is_the_tighter_one(test_env: Isolated) -> None:
    # GIVEN plenty of requests a minute but 6,000 tokens a minute, and requests of 100 tokens each
    url, key = test_env.env["REDIS_URL"], _key()
    client = connect_redis(url)
    start = enable_admission_log(client, key, 10_000)
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: _reserve_many(url, key, 100_000, 6_000, 30, 100), range(6)))
    # THEN no minute holds more than 60 requests of 100 tokens
    slots = _slots(client, key, start)
    assert len(slots) == 180
    assert most_in_window(slots, MINUTE_US) * 100 == 6_000


def test_a_wait_beyond_the_budget_is_refused_and_takes_no_slot(test_env: Isolated) -> None:
    # GIVEN a quota of 60 a minute (a slot a second) with one slot taken
    client = connect_redis(test_env.env["REDIS_URL"])
    limiter = RedisRequestLimiter(client, _key(), 60)
    first = limiter.reserve(1, 1)
    # WHEN a caller that can wait only half a second asks
    limiter.wait_budget = lambda: 0.5
    refused = limiter.reserve(1, 1)
    # THEN it is refused with the wait it would have had, and the next caller gets that same slot
    assert not refused.admitted
    assert 0.5 < refused.wait_seconds <= 1.0
    limiter.wait_budget = lambda: 5.0
    second = limiter.reserve(1, 1)
    assert second.admitted
    assert second.slot_us == refused.slot_us == first.slot_us + MICROSECONDS


def test_the_counters_show_admissions_per_second(test_env: Isolated) -> None:
    client = connect_redis(test_env.env["REDIS_URL"])
    key = _key()
    _reserve_many(test_env.env["REDIS_URL"], key, 600, None, 25, 1)  # 10 a second: 2.5 s of slots
    _, counts = admissions_per_second(client, key, 60)
    assert sum(counts.values()) == 25
    assert max(counts.values()) == 10


def test_acquire_sleeps_until_its_slot_on_the_server_clock(test_env: Isolated) -> None:
    client = connect_redis(test_env.env["REDIS_URL"])
    slept: list[float] = []
    limiter = RedisRequestLimiter(client, _key(), 120, sleep=slept.append)
    for _ in range(3):
        limiter.acquire(1, 1)
    # The first goes at once; the others wait for their slots, half a second apart, less the time
    # elapsed since the first (never more than their slot is away, whatever the machine's load).
    assert len(slept) == 2
    assert 0 < slept[0] <= 0.5
    assert slept[0] < slept[1] <= 1.0


def test_redis_down_while_acquiring_is_unavailable(test_env: Isolated) -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    limiter = RedisRequestLimiter(client, _key(), 60)
    with pytest.raises(UnavailableError, match="quota"):
        limiter.acquire(1, 1)


def test_concurrent_acquires_are_spaced_by_the_quota(test_env: Isolated) -> None:
    # Real sleeping: 8 threads take 8 slots of a 1,200-a-minute quota (20 per second).
    client = connect_redis(test_env.env["REDIS_URL"])
    key = _key()
    start = enable_admission_log(client, key, 100)
    limiter = RedisRequestLimiter(client, key, 1_200)
    threads = [threading.Thread(target=limiter.acquire, args=(1, 10)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most_in_window(_slots(client, key, start), MICROSECONDS // 20) == 1


def test_status_shows_the_quota_used_in_the_last_minute_and_reserved_ahead(test_env: Isolated) -> None:
    # GIVEN a quota of 600 a minute (10 a second) and 25 requests reserved at once: 2.5 s of slots
    model = f"test-model-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        embedder="openai", openai_base_url="http://quota.test/v1", openai_model=model, embedding_quota_rpm=600
    )
    client = connect_redis(test_env.env["REDIS_URL"])
    _reserve_many(test_env.env["REDIS_URL"], quota_key(settings), 600, None, 25, 1)

    quota = gather_quota(client, settings)

    # THEN status counts every one of them, those whose second has come and those still ahead
    assert quota is not None
    assert quota["requests_last_60_seconds"] + quota["requests_reserved_ahead"] == 25
    assert quota["requests_reserved_ahead"] >= 5  # the last second's slots are still to come
    assert render_quota(quota).endswith(
        f"{model}: {quota['requests_last_60_seconds']} requests in the last"
        f" 60 s of 600/min, {quota['requests_reserved_ahead']} reserved ahead"
    )
    assert gather_quota(client, Settings()) is None


def _most_tokens_in_window(slots: list[int], tokens: list[int], window_us: int) -> int:
    """The most tokens admitted in any window [a, a + window_us) (the busiest starts at a slot)."""
    pairs = sorted(zip(slots, tokens, strict=True))
    return max(
        (sum(cost for slot, cost in pairs if start <= slot < start + window_us) for start, _ in pairs),
        default=0,
    )


@pytest.fixture(scope="module")
def quota_client(stack: StackState) -> redis.Redis:
    return connect_redis(stack.env["REDIS_URL"])


@hypothesis_settings(max_examples=40, deadline=None)
@given(
    rpm=st.integers(1, 600),
    tpm=st.none() | st.integers(100, 4_000),
    costs=st.lists(st.integers(1, 120), min_size=1, max_size=80),
)
def test_any_quotas_and_costs_keep_their_bounds_in_every_minute(
    quota_client: redis.Redis, rpm: int, tpm: int | None, costs: list[int]
) -> None:
    # GIVEN any requests and tokens quotas and requests of any token counts, reserved back to back
    key = _key()
    start = enable_admission_log(quota_client, key, 1_000)
    limiter = RedisRequestLimiter(quota_client, key, rpm, tpm)
    # (those whose slot is beyond the longest wait, 900 s, are refused and take nothing)
    admitted = [cost for cost in costs if limiter.reserve(1, cost).admitted]
    slots = _slots(quota_client, key, start)
    # THEN no minute admits more requests than the quota, and no more tokens than the quota plus
    # the largest request's own tokens less one (the bound the script's comment derives)
    assert len(slots) == len(admitted) >= 1
    assert most_in_window(slots, MINUTE_US) <= rpm
    if tpm is not None:
        assert _most_tokens_in_window(slots, admitted, MINUTE_US) <= tpm + max(admitted) - 1
