"""Throughput of each choice drugsync makes, measured side by side in one run, printed as ratios.

    .venv/bin/python -m benchmarks.pipeline [--drugs 10000]

Starts its own embedded stack in a temporary folder. Shared machines are noisy: read the ratios,
not the absolute numbers, and compare runs made on the same machine.
"""

import argparse
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.stack import embedded_stack
from console import local_stack
from console.event_source import EventSourceConfig, LocalEventSource
from console.seed import seed_drugs, synthetic_drugs
from console.services import Services
from shared.documents import build_embedding_text
from shared.embedders.hashing import HashingEmbedder
from shared.models import TEXT_FIELDS, Drug, SyncRequest
from shared.redis_store import RedisDocumentStore, connect_redis


def timed(action: Callable[[], Any]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def row(label: str, baseline: tuple[str, float], candidate: tuple[str, float], unit: str) -> str:
    (base_name, base_rate), (cand_name, cand_rate) = baseline, candidate
    return (
        f"{label:<28} {base_name:<22} {base_rate:>10,.0f} {unit:<8} {cand_name:<22} "
        f"{cand_rate:>10,.0f} {unit:<8} x{cand_rate / base_rate:,.1f}"
    )


def sample_texts(count: int) -> list[str]:
    drugs = [
        Drug(id=drug_id, updated_at=updated_at, **dict(zip(TEXT_FIELDS, texts, strict=True)))
        for drug_id, *texts, _eligible, updated_at in synthetic_drugs(count)
    ]
    return [build_embedding_text(drug) for drug in drugs]


def bench_embedding(count: int) -> str:
    texts = sample_texts(count)
    one_by_one = HashingEmbedder(384, batch_size=1)
    batched = HashingEmbedder(384, batch_size=256)
    batched.embed_texts(texts[:100])  # warm the feature cache equally for both
    per_text = count / timed(lambda: [one_by_one.embed_texts([text]) for text in texts])
    per_batch = count / timed(lambda: batched.embed_texts(texts))
    return row(
        "embedding (hashing, 384d)", ("one call per text", per_text), ("batches of 256", per_batch), "texts/s"
    )


def bench_redis_writes(redis_url: str, count: int) -> str:
    client = connect_redis(redis_url)
    vector = [0.01] * 384
    documents = [(i, {"id": i, "name": f"drug {i}", "embedding": vector}) for i in range(count)]
    prefix = f"bench{uuid.uuid4().hex[:6]}:"  # no index covers it: measures the write path alone
    piped = RedisDocumentStore(client, prefix, "unused", write_batch_size=500)
    single = RedisDocumentStore(client, prefix + "s:", "unused", write_batch_size=1)
    one_by_one = count / timed(lambda: single.write_documents(documents))
    pipelined = count / timed(lambda: piped.write_documents(documents))
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        client.delete(key)
    return row(
        "redis JSON.SET (no index)",
        ("one round trip each", one_by_one),
        ("pipelines of 500", pipelined),
        "docs/s",
    )


def bench_consumers(services: Services, sqs: Any, drugs: int) -> str:
    rates = []
    for concurrency in (1, 2):
        index = f"idx:bench{uuid.uuid4().hex[:6]}"
        settings = services.settings.model_copy(update={"index_name": index, "key_prefix": index[4:] + ":"})
        os.environ["DRUGSYNC_INDEX_NAME"], os.environ["DRUGSYNC_KEY_PREFIX"] = index, index[4:] + ":"
        with Services(settings) as run_services:
            run_services.producer.start(SyncRequest())
            config = EventSourceConfig(
                queue_url=settings.queue_url or "", max_concurrency=concurrency, wait_seconds=0,
                until_empty=True, log_path=os.devnull,
            )  # fmt: skip
            rates.append(drugs / timed(LocalEventSource(sqs, config).run))
    return row(
        "consumers (HNSW, 384d)", ("max concurrency 1", rates[0]), ("max concurrency 2", rates[1]), "drugs/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drugs", type=int, default=10_000)
    args = parser.parse_args()
    with embedded_stack(local_stack.QueueOptions(visibility_timeout=600)) as (services, state, _):
        eligible = seed_drugs(services.conn, services.settings, args.drugs)
        print(f"benchmarks on {args.drugs:,} synthetic drugs ({eligible:,} eligible)\n")
        print(bench_embedding(min(args.drugs, 20_000)))
        print(bench_redis_writes(state.env["REDIS_URL"], min(args.drugs, 20_000)))
        print(bench_consumers(services, services.sqs_client(), eligible))


if __name__ == "__main__":
    main()
