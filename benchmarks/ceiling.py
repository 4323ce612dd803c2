"""Rows D and E, memory per document and recall: the same documents, pre-built in memory, written
into a fresh index of the same settings, by drugsync's write path (D) and by RedisVL (E).

The documents are drugsync's own: read range by range as a consumer reads them, embedded by the
settings' embedder and built by the consumer's document builder.
"""

import argparse
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.end_to_end import fresh_names
from benchmarks.probes import ServerMeter, used_memory
from benchmarks.table import Memory, Row
from console.seed import synthetic_sample
from shared.documents import build_document, build_embedding_text
from shared.embedders import build_embedder
from shared.index_schema import INDEX_FIELDS, VECTOR_METRIC
from shared.layout import VECTOR_FIELD
from shared.models import RowFailure
from shared.postgres import PostgresCatalog
from shared.redis_store import RedisDocumentStore
from shared.settings import Settings
from shared.wiring import build_store

Documents = list[tuple[int, dict[str, Any]]]
INDEXING_TIMEOUT_SECONDS = 600.0
WRITERS = 2  # row D's clients at once: two keep the server busy while one encodes (its own limit)


@dataclass(frozen=True)
class Layout:
    """A storage layout the memory rows compare, as the settings that choose it."""

    label: str
    settings: Mapping[str, Any]


# Every layout drugsync can store (DRUGSYNC_STORAGE x DRUGSYNC_VECTOR_TYPE).
LAYOUTS: tuple[Layout, ...] = tuple(
    Layout(f"{storage.upper()} {vector_type}", {"storage": storage, "vector_type": vector_type})
    for storage in ("json", "hash")
    for vector_type in ("FLOAT32", "FLOAT16")
)


def build_documents(settings: Settings, catalog: PostgresCatalog) -> Documents:
    """Every eligible drug's document, built as the consumers build them (range by range)."""
    return [document for batch in document_batches(settings, catalog, 1) for document in batch]


def document_batches(
    settings: Settings, catalog: PostgresCatalog, ranges_per_batch: int
) -> Iterator[Documents]:
    """The documents of `ranges_per_batch` ranges at a time, each range read as a consumer reads it."""
    embedder = build_embedder(settings)
    batch: Documents = []
    for number, planned in enumerate(catalog.plan_ranges(settings.range_size, None), start=1):
        drugs = catalog.fetch_range(planned.first_id, planned.last_id).drugs
        vectors = embedder.embed_texts([build_embedding_text(drug) for drug in drugs])
        batch += [
            (drug.id, build_document(drug, vector, embedder.name))
            for drug, vector in zip(drugs, vectors, strict=True)
        ]
        if number % ranges_per_batch == 0:
            yield batch
            batch = []
    if batch:
        yield batch


def wait_indexed(store: RedisDocumentStore, index_name: str, documents: int) -> None:
    """Until FT.INFO counts every document and reports no indexing under way."""
    deadline = time.monotonic() + INDEXING_TIMEOUT_SECONDS
    while True:
        info = store.at(store.key_prefix, index_name).index_info() or {}
        if int(info.get("num_docs", 0)) >= documents and str(info.get("indexing", "0")) == "0":
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{index_name}: {info.get('num_docs')} of {documents:,} indexed after the wait")
        time.sleep(0.05)


def run_ceiling(
    settings: Settings, documents: Documents, layout: Layout, recall_queries: int = 0, writers: int = 1
) -> tuple[Row, Memory, float | None]:
    """Row D for one layout: the documents through RedisDocumentStore.write_documents into a fresh index,
    timed until written and indexed; the memory they take; recall@10 if queries are asked for."""
    store = build_store(settings.model_copy(update={**fresh_names(), **layout.settings}))
    store.ensure_index(settings.embedding_dim)
    try:
        written = write_timed(store, [documents], settings.embed_batch_size, writers)
        recall = measure_recall(settings, store, documents, recall_queries) if recall_queries else None
    finally:
        store.clear()
    memory = Memory(layout.label, written.documents, written.used_bytes, written.documents / written.seconds)
    label = "the Redis ceiling: pre-built documents, drugsync's write path"
    clients = "1 client" if writers == 1 else f"{writers} clients"
    setup = (f"{layout.label}, {clients}, chunks of {settings.embed_batch_size} as consumers"
             " write them (fingerprint read, then new keys by JSON.SET NX),"
             f" client CPU {written.client_cpu:.1f} s, {written.redis_waited}")  # fmt: skip
    return Row("D", label, written.documents, written.seconds, setup, written.redis_cpu), memory, recall


@dataclass(frozen=True)
class Written:
    """Documents written into a fresh index, measured."""

    documents: int
    seconds: float  # writing and indexing only, not building the documents
    redis_cpu: float
    redis_waited: str  # the server's time waiting for a CPU, as a row's setup says it
    used_bytes: int  # used_memory after, less before
    client_cpu: float  # this process's CPU while writing (encoding, sending, reading replies)


def write_timed(
    store: RedisDocumentStore, batches: Iterable[Documents], chunk_size: int, writers: int = 1
) -> Written:
    """Write each batch of pre-built documents (built while the clock is stopped, so a batch at a time
    can stand for a catalog too large to hold at once), then wait until all are indexed."""
    before, server = used_memory(store.client), ServerMeter(store.client)
    seconds, client_cpu, count = 0.0, 0.0, 0
    for documents in batches:
        began, began_cpu = time.perf_counter(), time.process_time()
        failures = write_as_consumers_do(store, documents, chunk_size, writers)
        seconds += time.perf_counter() - began
        client_cpu += time.process_time() - began_cpu
        count += len(documents)
        if failures:
            raise SystemExit(f"{len(failures)} documents refused: {failures[:3]}")
    began = time.perf_counter()
    wait_indexed(store, store.index_name, count)
    seconds += time.perf_counter() - began
    used = used_memory(store.client) - before
    return Written(count, seconds, server.cpu(), server.waited(), used, client_cpu)


def add_writers_argument(parser: argparse.ArgumentParser) -> None:
    """--ceiling-writers, as make bench and make bench-full both take it."""
    parser.add_argument(
        "--ceiling-writers", type=int, default=WRITERS, help=f"the ceiling's clients at once ({WRITERS})"
    )


def write_as_consumers_do(
    store: RedisDocumentStore, documents: Documents, chunk_size: int, writers: int
) -> list[RowFailure]:
    """The consumers' write path for pre-built documents (consumer/sync.write_chunk): chunk by chunk,
    read the stored fingerprints, then write, naming the ids with no document as absent.

    `writers` chunks are in flight at once, as that many consumers write. One writer leaves the server
    idle while it encodes the next chunk (about a tenth of row D at 20,000 drugs); two keep it busy,
    so they measure the server's own limit."""

    def write(chunk: Documents) -> list[RowFailure]:
        stored = store.stored_fingerprints([drug_id for drug_id, _ in chunk])
        absent = {drug_id for drug_id, _ in chunk if drug_id not in stored}
        return store.write_documents(chunk, absent).failures

    chunks = [documents[start : start + chunk_size] for start in range(0, len(documents), chunk_size)]
    with ThreadPoolExecutor(max_workers=writers) as pool:
        return [failure for failures in pool.map(write, chunks) for failure in failures]


def redisvl_schema(settings: Settings, index_name: str, prefix: str) -> dict[str, Any]:
    """The index drugsync builds (shared/index_schema.py), as RedisVL's schema."""
    fields: list[dict[str, Any]] = []
    for field in INDEX_FIELDS:
        attrs: dict[str, Any] = {}
        if field.kind == "NUMERIC" and "SORTABLE" in field.options:
            attrs["sortable"] = True
        if "WEIGHT" in field.options:
            attrs["weight"] = float(field.options[field.options.index("WEIGHT") + 1])
        fields.append({"name": field.alias, "path": field.path, "type": field.kind.lower(), "attrs": attrs})
    vector = {
        "dims": settings.embedding_dim, "algorithm": "hnsw", "distance_metric": VECTOR_METRIC.lower(),
        "datatype": settings.vector_type.lower(), "m": settings.hnsw_m,
        "ef_construction": settings.hnsw_ef_construction,
    }  # fmt: skip
    fields.append({"name": VECTOR_FIELD, "path": f"$.{VECTOR_FIELD}", "type": "vector", "attrs": vector})
    index = {"name": index_name, "prefix": prefix.rstrip(":"), "key_separator": ":", "storage_type": "json"}
    return {"index": index, "fields": fields}


def run_redisvl(settings: Settings, documents: Documents, redis_url: str) -> Row:
    """Row E: RedisVL's SearchIndex.load of the same documents into an index of the same schema."""
    from redisvl.index import SearchIndex  # the `bench` extra: only this row needs it

    names = fresh_names()
    index = SearchIndex.from_dict(
        redisvl_schema(settings, names["index_name"], names["key_prefix"]), redis_url=redis_url
    )
    index.create(overwrite=True, drop=True)
    store = build_store(settings.model_copy(update=names))
    # The same documents as a RedisVL user holds them: its JSON storage encodes with the standard json
    # module, which takes a list of floats, not drugsync's numpy vector. Converted before the clock.
    objects = [
        {**document, VECTOR_FIELD: np.asarray(document[VECTOR_FIELD]).tolist()} for _, document in documents
    ]
    try:
        keys = [store.key(drug_id) for drug_id, _ in documents]
        server = ServerMeter(store.client)
        began, began_cpu = time.perf_counter(), time.process_time()
        index.load(objects, keys=keys, batch_size=settings.write_batch_size)
        client_cpu = time.process_time() - began_cpu
        wait_indexed(store, names["index_name"], len(documents))
        seconds = time.perf_counter() - began
        cpu, waited = server.cpu(), server.waited()
    finally:
        index.delete(drop=True)
        index.disconnect()
    setup = f"redisvl {redisvl_version()} SearchIndex.load, 1 client, batch_size {settings.write_batch_size}"
    setup += f", client CPU {client_cpu:.1f} s, {waited}"
    return Row("E", "RedisVL: the same documents, the same schema", len(documents), seconds, setup, cpu)


def redisvl_version() -> str:
    from importlib.metadata import version

    return version("redisvl")


def measure_recall(
    settings: Settings, store: RedisDocumentStore, documents: Documents, queries: int
) -> float:
    """Mean share of the exact top 10 (numpy cosine over the same vectors) that the HNSW KNN returns.

    Synthetic drugs repeat texts, so many vectors tie: a hit counts when its exact similarity reaches
    the tenth best one's, whichever of the tied documents it is.
    """
    ids = np.array([drug_id for drug_id, _ in documents])
    matrix = normalised(np.array([document["embedding"] for _, document in documents], dtype=np.float32))
    embedder = build_embedder(settings)
    texts = [build_embedding_text(drug) for drug in synthetic_sample(len(documents) + queries)[-queries:]]
    vectors = embedder.embed_texts(texts)
    position = {drug_id: i for i, drug_id in enumerate(ids.tolist())}
    shares = []
    for vector in vectors:
        exact = matrix @ normalised(vector[np.newaxis, :])[0]
        tenth = np.sort(exact)[-10]
        hits = [hit.drug_id for hit in store.search(vector, 10)]
        shares.append(sum(exact[position[hit]] >= tenth - 1e-6 for hit in hits) / 10)
    return float(np.mean(shares))


def normalised(matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)
