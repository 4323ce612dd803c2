"""The embedding quota, shared through Redis by every consumer of every deployment using that server.

A RequestLimiter (shared/ports.py) over one Redis hash per quota: each request reserves the next
slot the quota allows, computed by one Lua script with the server's clock, and the caller sleeps
until that slot. No caller polls, so while requests wait the quota is used to the last slot; a
caller that could not wait that long is refused (QuotaWaitTooLong) without taking a slot.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis

from shared.errors import QuotaWaitTooLong
from shared.redis_errors import translate_errors

# The longest a caller may be told to wait: Lambda's longest invocation, and SQS's longest delay.
MAX_WAIT_SECONDS = 900.0
# Per-second admission counters kept in a ring of this many seconds (longer than the longest wait,
# so a reserved second never shares its field with one still read).
COUNTER_RING_SECONDS = 1024
MICROSECONDS = 1_000_000

# GCRA (generic cell rate algorithm) as reservations, over requests and tokens per minute at once.
# Why no burst allowance: requests are admitted at slot times s_1 < s_2 < ..., each at least one
# interval T = 60 s / Q after the one before (`r` holds the previous slot + T). In a window
# [a, a + 60 s), the k-th admission after the first one in it is at >= a + (k - 1) T, and
# (k - 1) T < 60 s means k - 1 < Q: at most Q admissions. GCRA's usual tolerance tau lets a slot
# come tau early; then (k - 1) T - tau < 60 s allows Q + 1 in some window whatever tau > 0 is, so
# there is none. T is rounded up to whole microseconds: never a slot early. Tokens use the same
# rule with one interval per token, so a window may exceed the tokens quota by at most the last
# request's own tokens less one (k requests spaced by their costs), and by nothing when every
# request estimates the same count and it divides the quota; they are estimates anyway.
# The clock is the server's TIME, so Lambdas with skewed clocks agree. The reply is
# {admitted, microseconds to wait, slot}; a refused caller takes nothing. The caller sleeps the wait
# from the reply on, so it sends at or after its slot, never before (late only by its scheduling).
# Reserving slots ahead (instead of admitting only when the slot has come) is what keeps waiting
# callers from idling the quota: the next slot is always taken by someone already asleep until it.
# Observability in the same hash (one key per quota, so it runs on a cluster): s<i>/n<i> count the
# admissions of second s<i> in a ring, and when the field `log` holds N > 0 (set by a measurement or
# an operator), l<seq mod N> records each admission's slot, `seq` numbering them. No TTL: the hash
# stays small (two fields a second of the ring), and a volatile-* eviction policy, which evicts only
# keys with a TTL, must never forget the line (the README promises drugsync sets no TTLs).
# https://redis.io/docs/latest/develop/interact/programmability/eval-intro/
RESERVE_SCRIPT = """
local requests, tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
local request_us, token_us = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_wait_us, ring = tonumber(ARGV[5]), tonumber(ARGV[6])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local state = redis.call('HMGET', KEYS[1], 'r', 't', 'log', 'seq')
local slot = math.max(now, tonumber(state[1]) or 0)
if token_us > 0 then
  slot = math.max(slot, tonumber(state[2]) or 0)
end
local wait = slot - now
if wait > max_wait_us then
  return {0, wait, slot}
end
local function int(x) return string.format('%.0f', x) end
redis.call('HSET', KEYS[1], 'r', int(slot + requests * request_us))
if token_us > 0 then
  redis.call('HSET', KEYS[1], 't', int(slot + tokens * token_us))
end
local second = math.floor(slot / 1000000)
local cell = second % ring
if tonumber(redis.call('HGET', KEYS[1], 's' .. cell)) ~= second then
  redis.call('HSET', KEYS[1], 's' .. cell, second, 'n' .. cell, 0)
end
redis.call('HINCRBY', KEYS[1], 'n' .. cell, requests)
local log = tonumber(state[3]) or 0
if log > 0 then
  local seq = (tonumber(state[4]) or 0)
  for i = 1, requests do
    redis.call('HSET', KEYS[1], 'l' .. ((seq + i - 1) % log), int(slot))
  end
  redis.call('HSET', KEYS[1], 'seq', seq + requests)
end
return {1, wait, slot}
"""


@dataclass(frozen=True)
class Reservation:
    """What the script answered: admitted at `slot_us` (server microseconds) after `wait_seconds`."""

    admitted: bool
    wait_seconds: float
    slot_us: int


def interval_us(per_minute: int) -> int:
    """Microseconds between two units of a per-minute quota, rounded up: never a unit early (so a
    quota above 60,000,000 a minute is kept at that)."""
    return math.ceil(60 * MICROSECONDS / per_minute)


class RedisRequestLimiter:
    """Requests (and optionally tokens) per minute, shared by every caller of the same Redis key.

    `wait_budget` says how long a caller may wait now (the consumer sets it from its invocation's
    deadline); a longer wait raises QuotaWaitTooLong and reserves nothing.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        requests_per_minute: int | None,
        tokens_per_minute: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self.key = key
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._request_us = interval_us(requests_per_minute) if requests_per_minute else 0
        self._token_us = interval_us(tokens_per_minute) if tokens_per_minute else 0
        self._sleep = sleep
        self._script = client.register_script(RESERVE_SCRIPT)
        self.wait_budget: Callable[[], float] = lambda: MAX_WAIT_SECONDS

    def acquire(self, requests: int, tokens: int) -> None:
        """Reserve the next slot for `requests` requests carrying `tokens` tokens, then sleep until it."""
        reservation = self.reserve(requests, tokens)
        if not reservation.admitted:
            raise QuotaWaitTooLong(reservation.wait_seconds, self.key)
        if reservation.wait_seconds > 0:
            self._sleep(reservation.wait_seconds)

    def reserve(self, requests: int, tokens: int) -> Reservation:
        """One script call: the slot these requests may go at, taken only if it is within the budget."""
        if requests < 1 or tokens < 0:
            raise ValueError(f"acquire needs requests >= 1 and tokens >= 0, not {requests}, {tokens}")
        max_wait = min(MAX_WAIT_SECONDS, max(0.0, self.wait_budget()))
        arguments = [requests, tokens, self._request_us, self._token_us, int(max_wait * MICROSECONDS)]
        with translate_errors("reserving an embedding request under the quota", self._client):
            admitted, wait_us, slot_us = self._script(
                keys=[self.key], args=[*arguments, COUNTER_RING_SECONDS]
            )
        return Reservation(bool(admitted), int(wait_us) / MICROSECONDS, int(slot_us))


def admissions_per_second(client: redis.Redis, key: str, seconds: int) -> tuple[int, dict[int, int]]:
    """The server's second now, and the requests admitted in each of the last `seconds` seconds and
    those reserved ahead: {unix second: requests}, from the quota's counters."""
    now = int(client.time()[0])
    fields = cast(dict[bytes, bytes], client.hgetall(key))
    values = {name.decode(): int(value) for name, value in fields.items() if name[:1] in b"sn"}
    counts = {
        values[f"s{cell}"]: values.get(f"n{cell}", 0)
        for cell in range(COUNTER_RING_SECONDS)
        if values.get(f"s{cell}", 0) > now - seconds
    }
    return now, counts


def enable_admission_log(client: redis.Redis, key: str, capacity: int) -> int:
    """Record each admission's slot in the quota's hash (a ring of `capacity`); returns the sequence
    number of the next admission, where a reader starts."""
    client.hset(key, "log", capacity)
    return int(client.hget(key, "seq") or 0)


def read_admission_log(client: redis.Redis, key: str, start: int) -> tuple[list[int], int]:
    """Slots (server microseconds) of the admissions numbered from `start` on, and the next number.
    A reader must come back before `capacity` more admissions overwrite the ring."""
    values = client.hmget(key, ["log", "seq"])
    capacity, end = int(values[0] or 0), int(values[1] or 0)
    if capacity == 0 or end <= start:
        return [], max(start, end)
    if end - start > capacity:
        raise RuntimeError(
            f"admission log overrun: {end - start} admissions since the last read, ring of {capacity}"
        )
    slots = client.hmget(key, [f"l{seq % capacity}" for seq in range(start, end)])
    return [int(slot) for slot in slots if slot is not None], end


def most_in_window(slots: list[int], window_us: int) -> int:
    """The most admissions in any half-open window [a, a + window_us), counted exactly: the busiest
    window starts at an admission, so it is enough to try each as a start."""
    ordered = sorted(slots)
    most, end = 0, 0
    for start, slot in enumerate(ordered):
        end = max(end, start)
        while end < len(ordered) and ordered[end] < slot + window_us:
            end += 1
        most = max(most, end - start)
    return most
