"""Where a consumer's CPU goes: one process syncs a seeded catalog in-process under cProfile.

    .venv/bin/python -m benchmarks.cpu_profile [--drugs 5000] [--storage json|hash] [--top 25]

Starts its own embedded stack, starts a full run, then handles every message in this process (no
child consumers), so the profile holds the whole consumer path: read, embed, fingerprint, encode,
write. Prints this process's CPU seconds and the Redis server's (INFO cpu), both per 10,000 drugs,
and the functions that cost the most.
"""

import argparse
import cProfile
import io
import os
import pstats
import time
from typing import Any

from benchmarks.stack import embedded_stack
from console import local_stack
from console.seed import seed_drugs
from shared.models import SyncRequest, parse_message


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Invocation:
    """A Lambda context with a fresh 15 minutes for each message (a deadline far beyond any range)."""

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def consume(sqs: Any, queue_url: str) -> int:
    """Handle every message on the queue in this process, as a consumer would; returns messages handled."""
    from consumer.handler import ContextDeadline, _consumer
    from consumer.sync import sync_message

    consumer, handled = _consumer(), 0
    while True:
        reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = reply.get("Messages", [])
        if not messages:
            return handled
        for message in messages:
            sync_message(parse_message(message["Body"]), consumer.env(), ContextDeadline(Invocation()))  # type: ignore[arg-type]
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            handled += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drugs", type=int, default=5000)
    parser.add_argument("--storage", choices=("json", "hash"), default="json")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    os.environ["DRUGSYNC_STORAGE"] = args.storage
    with embedded_stack(local_stack.QueueOptions(visibility_timeout=600)) as (services, state, _):
        eligible = seed_drugs(services.conn, services.settings, args.drugs)
        services.producer.start(SyncRequest())
        client = services.store.client
        profile = cProfile.Profile()
        cpu, server, wall = time.process_time(), redis_cpu(client), time.perf_counter()
        profile.enable()
        handled = consume(services.sqs_client(), state.env["QUEUE_URL"])
        profile.disable()
        cpu, server = time.process_time() - cpu, redis_cpu(client) - server
        wall = time.perf_counter() - wall
        per = 10_000 / eligible
        print(
            f"{eligible:,} drugs ({args.storage}), {handled} messages in {wall:.1f}s: consumer CPU"
            f" {cpu:.2f}s ({cpu * per:.2f}s per 10,000 drugs), Redis server CPU {server:.2f}s"
            f" ({server * per:.2f}s per 10,000)"
        )
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
