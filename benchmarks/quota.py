"""Does a run at maximum concurrency keep the embedding quota, neither past it nor idling below it?

    .venv/bin/python -m benchmarks.quota --quota 3000 --consumers 8 --drugs 7500 [--latency-ms 70]

Starts its own embedded stack; embeds with the simulated API (one text per request, a fixed latency,
8 requests in flight per consumer) under a quota of Q requests a minute, shared through Redis; the
producer plans the run and the local event source runs C consumers at once. The quota's admission
log gives every request's slot (server time), from which it prints the most requests in any 60 s
window (must be <= Q), each full minute's requests while work remained as a fraction of Q (must be
>= 0.9), and drugs/s. Exits 1 if either fails or verify finds drift. Needs a couple of minutes of work
(N / Q minutes) to have a full minute to judge.
"""

import argparse
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from benchmarks.stack import embedded_stack
from console import local_stack
from console.event_source import EventSourceConfig, LocalEventSource
from console.seed import seed_drugs
from console.verify import verify
from shared.models import SyncRequest
from shared.ratelimit import MICROSECONDS, enable_admission_log, most_in_window, read_admission_log
from shared.redis_store import connect_redis
from shared.wiring import quota_key

MINUTE_US = 60 * MICROSECONDS
READ_EVERY_SECONDS = 2.0
MIN_RATE = 0.9


class AdmissionLog:
    """Reads the quota's admission log in the background, before its ring can wrap."""

    def __init__(self, client: redis.Redis, key: str, capacity: int) -> None:
        self._client, self._key = client, key
        self._next = enable_admission_log(client, key, capacity)
        self.slots: list[int] = []
        self._stop = threading.Event()

    def _read(self) -> None:
        slots, self._next = read_admission_log(self._client, self._key, self._next)
        self.slots += slots

    def _poll(self) -> None:
        while not self._stop.wait(READ_EVERY_SECONDS):
            self._read()

    @contextmanager
    def recording(self) -> Iterator["AdmissionLog"]:
        thread = threading.Thread(target=self._poll, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self._read()
            capacity = int(self._client.hget(self._key, "log") or 0)
            self._client.hdel(self._key, "log", *(f"l{cell}" for cell in range(capacity)))


def minute_rates(slots: list[int], quota: int) -> list[float]:
    """Requests in each full minute from the first admission, while work remained (up to the last
    admission), as fractions of the quota."""
    ordered = sorted(slots)
    if not ordered:
        return []
    first, last = ordered[0], ordered[-1]
    minutes = (last - first) // MINUTE_US
    return [
        sum(first + m * MINUTE_US <= slot < first + (m + 1) * MINUTE_US for slot in ordered) / quota
        for m in range(minutes)
    ]


def configure(args: argparse.Namespace) -> None:
    """The settings every consumer process inherits: the simulated API under the quota."""
    os.environ.update(
        {
            "DRUGSYNC_EMBEDDER": "simulated",
            "DRUGSYNC_SIMULATED_LATENCY_MS": str(args.latency_ms),
            "DRUGSYNC_SIMULATED_TEXTS_PER_REQUEST": "1",
            "DRUGSYNC_BEDROCK_CONCURRENCY": "8",
            "DRUGSYNC_EMBEDDING_QUOTA_RPM": str(args.quota),
        }
    )
    os.environ.pop("DRUGSYNC_EMBEDDING_QUOTA_TPM", None)


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--quota", type=int, default=3000, help="requests per minute (Q)")
    parser.add_argument("--consumers", type=int, default=8, help="maximum concurrency (C)")
    parser.add_argument("--drugs", type=int, default=7500)
    parser.add_argument("--latency-ms", type=float, default=70.0)
    args = parser.parse_args()
    configure(args)
    with embedded_stack(local_stack.QueueOptions(visibility_timeout=600)) as (services, state, _):
        settings = services.settings
        eligible = seed_drugs(services.conn, settings, args.drugs)
        client = connect_redis(state.env["REDIS_URL"])
        log = AdmissionLog(client, quota_key(settings), capacity=max(10_000, 10 * args.quota))
        config = EventSourceConfig(
            queue_url=settings.queue_url or "", max_concurrency=args.consumers, wait_seconds=0,
            until_empty=True, log_path=os.devnull,
        )  # fmt: skip
        print(f"quota {args.quota:,}/min, {args.consumers} consumers, {eligible:,} eligible drugs")
        with log.recording():
            began = time.perf_counter()
            services.producer.start(SyncRequest(range_size=max(100, eligible // (4 * args.consumers))))
            stats = LocalEventSource(services.sqs_client(), config).run()
            seconds = time.perf_counter() - began
        report = verify(services.catalog, services.current_store, services.embedder.name)
    return judge(log.slots, args.quota, eligible, seconds, stats.failed, report.clean)


def judge(slots: list[int], quota: int, drugs: int, seconds: float, failed: int, clean: bool) -> int:
    """Print the measures; 0 when the quota was kept and used, 1 otherwise."""
    most = most_in_window(slots, MINUTE_US)
    rates = minute_rates(slots, quota)
    print(f"requests admitted:            {len(slots):,}")
    kept = most <= quota
    print(f"most in any 60 s window:      {most:,}  (quota {quota:,}: {'ok' if kept else 'EXCEEDED'})")
    shown = ", ".join(f"{rate:.3f}" for rate in rates) or "none (run shorter than a minute)"
    used = bool(rates) and min(rates) >= MIN_RATE
    print(f"full minutes / quota:         {shown}  ({'ok' if used else f'below {MIN_RATE}'})")
    print(f"drugs/s:                      {drugs / seconds:,.1f}  ({seconds:,.1f} s)")
    print(f"failed messages, verify:      {failed}, {'clean' if clean else 'DRIFT'}")
    return 0 if kept and used and failed == 0 and clean else 1


if __name__ == "__main__":
    sys.exit(main())
