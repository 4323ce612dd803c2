"""Row A: the original design, one process and one drug at a time: read it from Postgres, embed it
with one API request, write it with one JSON.SET, then the next."""

import json
import time

from benchmarks.end_to_end import fresh_names
from benchmarks.probes import redis_cpu_seconds
from benchmarks.table import Row
from console.services import Services
from shared.documents import build_document, build_embedding_text
from shared.embedders import SimulatedApiEmbedder
from shared.generations import RedisGenerations
from shared.redis_store import execute
from shared.settings import Settings
from shared.wiring import build_catalog, build_store


def first_eligible_ids(services: Services, count: int) -> list[int]:
    """The first `count` eligible ids of the catalog, in id order."""
    first_page = next(services.catalog.iter_eligible(page_size=count), None)
    return [] if first_page is None else [drug.id for drug in first_page.drugs]


def run_original(services: Services, count: int, latency_ms: float) -> Row:
    """Row A over the first `count` eligible drugs, into a fresh index of the same settings."""
    settings = Settings().model_copy(update=fresh_names())
    store = build_store(settings)
    store.ensure_index(settings.embedding_dim)
    catalog = build_catalog(settings, services.db)
    embedder = SimulatedApiEmbedder(
        settings.embedding_dim, batch_size=1, latency_seconds=latency_ms / 1000, texts_per_request=1,
        concurrency=1,
    )  # fmt: skip
    ids = first_eligible_ids(services, count)
    try:
        cpu = redis_cpu_seconds(store.client)
        began = time.perf_counter()
        for drug_id in ids:
            (drug,) = catalog.fetch_ids([drug_id]).drugs
            vector = embedder.embed_texts([build_embedding_text(drug)])[0]
            document = {**build_document(drug, vector, embedder.name), "embedding": vector.tolist()}
            execute(store.client, "JSON.SET", store.key(drug_id), "$", json.dumps(document))
        seconds = time.perf_counter() - began
        cpu = redis_cpu_seconds(store.client) - cpu
    finally:
        RedisGenerations(store).clear_all()
    setup = f"1 process, {latency_ms:g} ms per request, 1 JSON.SET per drug"
    return Row("A", "original design: read, embed, write one drug at a time", len(ids), seconds, setup, cpu)
