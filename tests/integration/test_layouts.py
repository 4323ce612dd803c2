"""JSON and HASH documents, FLOAT32 and FLOAT16 vectors, HNSW and FLAT, on the real Redis Stack 7.4."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import redis

from shared.documents import build_document, build_embedding_text, fingerprint
from shared.embedders.hashing import HashingEmbedder
from shared.errors import ConfigError, UnavailableError
from shared.layout import DTYPES, StorageLayout, decode_vector
from shared.redis_store import RedisDocumentStore, connect_redis
from shared.settings import get_settings
from shared.wiring import build_store
from tests.conftest import Isolated
from tests.factories import as_texts, readme_reader
from tests.fakes import make_drug
from tests.integration.test_redis import _drugs
from tests.store_cases import out_of_memory, play_newest_wins, refused

pytestmark = pytest.mark.integration
DIMENSION = 128
LAYOUTS = {
    "json FLOAT32 HNSW": {},
    "hash FLOAT32 HNSW": {"DRUGSYNC_STORAGE": "hash"},
    "hash FLOAT16 FLAT": {
        "DRUGSYNC_STORAGE": "hash", "DRUGSYNC_VECTOR_TYPE": "FLOAT16", "DRUGSYNC_VECTOR_ALGORITHM": "FLAT",
    },
    "json FLOAT16 HNSW": {"DRUGSYNC_VECTOR_TYPE": "float16"},
}  # fmt: skip


@pytest.fixture(params=sorted(LAYOUTS))
def layout_env(
    request: pytest.FixtureRequest, test_env: Isolated, monkeypatch: pytest.MonkeyPatch
) -> Isolated:
    """test_env with the settings of one layout."""
    for name, value in LAYOUTS[request.param].items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.storage + " " + settings.vector_type + " " + settings.vector_algorithm == request.param
    return Isolated(settings, {**test_env.env, **LAYOUTS[request.param]})


def _client(env: Isolated) -> redis.Redis:
    return connect_redis(env.env["REDIS_URL"])


def read_document(client: redis.Redis, store: RedisDocumentStore, drug_id: int) -> dict[str, Any]:
    """A stored document as a dict whatever its layout: a HASH's numbers parsed, its vector unpacked."""
    if store.layout.storage == "json":
        raw = client.execute_command("JSON.GET", store.key(drug_id), "$")  # type: ignore[no-untyped-call]
        return dict(json.loads(raw)[0])
    raw_fields: dict[bytes, bytes] = client.hgetall(store.key(drug_id))  # type: ignore[assignment]
    fields = {k.decode(): v for k, v in raw_fields.items()}
    document: dict[str, Any] = {k: v.decode() for k, v in fields.items() if k != "embedding"}
    for number in ("id", "version"):
        if number in document:
            document[number] = int(document[number])
    document["embedding"] = decode_vector(fields["embedding"], store.layout)
    document["embedding_bytes"] = len(fields["embedding"])
    return document


def _vector(seed: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_a_document_keeps_every_field_and_its_vector_in_each_layout(layout_env: Isolated) -> None:
    store, client = build_store(layout_env.settings), _client(layout_env)
    drug = make_drug(6, brand_name="Amoxil", read_at=datetime(2026, 1, 1, tzinfo=UTC))

    result = store.write_documents([(6, build_document(drug, _vector(6), "e1"))])

    assert result.failures == []
    stored = read_document(client, store, 6)
    assert (stored["id"], stored["version"]) == (6, 1_767_225_600_000_000)
    assert (stored["name"], stored["brand_name"]) == ("Amoxicillin 500 mg capsule", "Amoxil")
    assert stored["fingerprint"] == fingerprint(drug, "e1")
    tolerance = 1e-3 if store.layout.vector_type == "FLOAT16" else 1e-6
    np.testing.assert_allclose(stored["embedding"], _vector(6), atol=tolerance)
    if store.layout.storage == "hash":  # packed little-endian floats of the vector type, nothing else
        assert stored["embedding_bytes"] == DIMENSION * DTYPES[store.layout.vector_type].itemsize
    assert client.type(store.key(6)) == (b"hash" if store.layout.storage == "hash" else b"ReJSON-RL")


def test_the_newest_version_wins_in_each_layout(layout_env: Isolated) -> None:
    store, client = build_store(layout_env.settings), _client(layout_env)

    play_newest_wins(store, _vector, lambda i: read_document(client, store, i)["name"])


def test_a_field_that_became_null_is_cleared_from_the_document_and_the_index(layout_env: Isolated) -> None:
    store, client = build_store(layout_env.settings), _client(layout_env)
    store.ensure_index(DIMENSION)
    branded = make_drug(3, brand_name="Amoxil", read_at=datetime(2026, 1, 1, tzinfo=UTC))
    store.write_documents([(3, build_document(branded, _vector(3), "e1"))])
    store.wait_until_indexed(1, seconds=10)
    assert _matches(client, store, "@brand_name:Amoxil") == 1

    unbranded = make_drug(3, brand_name=None, read_at=datetime(2026, 1, 2, tzinfo=UTC))
    result = store.write_documents([(3, build_document(unbranded, _vector(3), "e1"))])

    assert result.failures == []
    assert read_document(client, store, 3).get("brand_name") is None  # JSON null, or no HASH field
    if store.layout.storage == "hash":
        assert not client.hexists(store.key(3), "brand_name")
    assert _wait_for(lambda: _matches(client, store, "@brand_name:Amoxil") == 0)
    assert _matches(client, store, "@name:Amoxicillin") == 1


def _matches(client: redis.Redis, store: RedisDocumentStore, query: str) -> int:
    reply = client.execute_command("FT.SEARCH", store.index_name, query, "LIMIT", "0", "0")  # type: ignore[no-untyped-call]
    return int(reply[0])


def _wait_for(check: Any, seconds: float = 10) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stored_fingerprints_are_read_in_each_layout(layout_env: Isolated) -> None:
    store = build_store(layout_env.settings)
    drugs = [make_drug(i, read_at=datetime(2026, 1, 1, tzinfo=UTC)) for i in (5, 6, 2**63 - 1)]
    store.write_documents([(d.id, build_document(d, _vector(d.id % 1000), "e1")) for d in drugs])
    expected = {d.id: fingerprint(d, "e1") for d in drugs}

    assert store.stored_fingerprints([5, 6, 7, 2**63 - 1]) == expected  # 7 is not stored: absent
    assert store.fingerprints(page_size=2) == expected


def test_an_out_of_memory_server_keeps_each_layouts_documents_as_they_were(layout_env: Isolated) -> None:
    store, client = build_store(layout_env.settings), _client(layout_env)
    documents = [(i, build_document(make_drug(i, brand_name="Amoxil"), _vector(i), "e1")) for i in (1, 2)]
    assert store.write_documents(documents).failures == []
    before = refused(client, "OOM")

    rewritten = [(i, build_document(make_drug(i, name="Rewritten"), _vector(i), "e1")) for i in (1, 2)]
    with out_of_memory(client), pytest.raises(UnavailableError):
        store.write_documents(rewritten)

    assert refused(client, "OOM") > before
    kept = read_document(client, store, 1)
    assert (kept["name"], kept["brand_name"]) == ("Amoxicillin 500 mg capsule", "Amoxil")


def test_a_hash_write_never_replaces_a_key_of_another_type(
    test_env: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRUGSYNC_STORAGE", "hash")
    get_settings.cache_clear()
    store, client = build_store(get_settings()), _client(test_env)
    client.execute_command("JSON.SET", store.key(4), "$", '{"someone": "else"}')  # type: ignore[no-untyped-call]

    result = store.write_documents([(4, build_document(make_drug(4), _vector(4), "e1"))])

    assert [failure.drug_id for failure in result.failures] == [4]
    assert "WRONGTYPE" in result.failures[0].error
    assert client.type(store.key(4)) == b"ReJSON-RL"
    assert store.fingerprints() == {4: ""}  # read as a document without a fingerprint: verify calls it stale


@pytest.fixture
def stores(test_env: Isolated) -> Iterator[dict[str, RedisDocumentStore]]:
    """One store per layout on the test's server, each under its own prefix and index."""
    client = connect_redis(test_env.env["REDIS_URL"])
    made = {}
    for name in sorted(LAYOUTS):
        storage, vector_type, algorithm = name.split()
        layout = StorageLayout(storage, vector_type, algorithm)  # type: ignore[arg-type]
        tag = name.replace(" ", "-").lower()
        made[name] = RedisDocumentStore(client, f"{test_env.settings.key_prefix}{tag}:", f"{tag}-{id(client)}",
                                        layout=layout)  # fmt: skip
    yield made
    for store in made.values():
        store.clear()


def test_search_answers_the_same_in_every_layout(stores: dict[str, RedisDocumentStore]) -> None:
    embedder = HashingEmbedder(DIMENSION, batch_size=200)
    drugs = _drugs(400)
    vectors = embedder.embed_texts([build_embedding_text(drug) for drug in drugs])
    for store in stores.values():
        store.ensure_index(DIMENSION)
        documents = [(d.id, build_document(d, v, embedder.name)) for d, v in zip(drugs, vectors, strict=True)]
        assert store.write_documents(documents).failures == []
        store.wait_until_indexed(len(drugs), seconds=30)

    queries = ["amoxicillin 500 mg capsule", "lipitor 40 mg tablet", "metformin oral", "insulin injection"]
    for text in queries:
        vector = embedder.embed_texts([text])[0]
        answers = {name: [hit.drug_id for hit in store.search(vector, 5)] for name, store in stores.items()}
        exact = answers["json FLOAT32 HNSW"]
        assert answers["hash FLOAT32 HNSW"] == exact, text
        for name in ("hash FLOAT16 FLAT", "json FLOAT16 HNSW"):  # half precision may swap near ties
            assert answers[name][0] == exact[0], (text, answers)
            assert len(set(answers[name]) & set(exact)) >= 4, (text, answers)


ANOTHER_LAYOUT = {
    # (the settings' layout, the layout of the index found under its name, the difference named)
    "JSON index, HASH settings": ("hash FLOAT32 HNSW", "json FLOAT32 HNSW", "indexes JSON keys, not HASH"),
    "HASH index, JSON settings": ("json FLOAT32 HNSW", "hash FLOAT32 HNSW", "indexes HASH keys, not JSON"),
    "FLOAT32 index, FLOAT16 settings": ("json FLOAT16 HNSW", "json FLOAT32 HNSW", "data_type is FLOAT32, not FLOAT16"),
    "HNSW index, FLAT settings": ("hash FLOAT16 FLAT", "hash FLOAT16 HNSW", "algorithm is HNSW, not FLAT"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ANOTHER_LAYOUT))
def test_an_index_of_another_layout_is_refused_naming_the_difference(test_env: Isolated, case: str) -> None:
    wanted, found, difference = ANOTHER_LAYOUT[case]
    client = connect_redis(test_env.env["REDIS_URL"])

    def store(name: str) -> RedisDocumentStore:
        storage, vector_type, algorithm = name.split()
        layout = StorageLayout(storage, vector_type, algorithm)  # type: ignore[arg-type]
        return RedisDocumentStore(
            client, test_env.settings.key_prefix, test_env.settings.index_name, layout=layout
        )

    store(found).ensure_index(DIMENSION)

    with pytest.raises(ConfigError) as refused_index:
        store(wanted).ensure_index(DIMENSION)

    assert difference in str(refused_index.value)
    store(found).ensure_index(DIMENSION)  # its own layout is accepted again
    store(found).clear()


def test_plan_measures_the_chosen_layout_first_and_every_other_beside_it(test_env: Isolated) -> None:
    from console.capacity import measure

    client = connect_redis(test_env.env["REDIS_URL"])
    chosen = StorageLayout("hash", "FLOAT32", "HNSW")
    store = RedisDocumentStore(
        client, test_env.settings.key_prefix, test_env.settings.index_name, layout=chosen
    )

    measured = measure(_drugs(200), HashingEmbedder(1024, batch_size=100), store)

    sizes = {cost.layout: cost.total for cost in measured.layouts}
    assert measured.layouts[0].layout == "hash FLOAT32 HNSW"
    assert set(sizes) == {f"{s} {v} HNSW" for s in ("json", "hash") for v in ("FLOAT32", "FLOAT16")}
    assert all(size is not None and size > 0 for size in sizes.values())
    assert sizes["hash FLOAT32 HNSW"] < sizes["json FLOAT32 HNSW"]  # type: ignore[operator]
    assert sizes["hash FLOAT16 HNSW"] < sizes["hash FLOAT32 HNSW"]  # type: ignore[operator]
    assert measured.server_seconds_per_drug > 0
    costs = {cost.layout: cost for cost in measured.layouts}
    for vector_type, width in (("FLOAT32", 4), ("FLOAT16", 2)):  # every field counted, the vector too
        assert (costs[f"hash {vector_type} HNSW"].document_bytes or 0) > 1024 * width
    assert list(client.scan_iter("drugsync-plan-*")) == []  # every scratch index and key removed
    assert not [name for name in client.execute_command("FT._LIST") if b"drugsync-plan-" in name]  # type: ignore[no-untyped-call]


def test_the_readme_reader_searches_a_generation_of_each_layout_as_drugsync_does(
    layout_env: Isolated,
) -> None:

    from shared.generations import RedisGenerations
    from tests.integration.test_redis import write_drugs

    # GIVEN generation 1 of this layout current, and the README's reader
    gens = RedisGenerations(build_store(layout_env.settings))
    first = gens.begin("hashing-v1-128", DIMENSION, "run-1")
    write_drugs(_drugs(200), HashingEmbedder(DIMENSION, batch_size=256), gens.store(first.number))
    gens.store(first.number).wait_until_indexed(len(_drugs(200)), seconds=30)
    gens.switch(first.number)
    namespace = readme_reader()

    # WHEN it searches
    keys = namespace["search"](gens.store(1).client, "amoxicillin 500 mg capsule", 5, gens.alias)

    # THEN it answers what drugsync's own search answers
    vector = HashingEmbedder(DIMENSION, 16).embed_texts(["amoxicillin 500 mg capsule"])[0]
    store = gens.store(1)
    expected = [store.key(hit.drug_id) for hit in store.search(vector, 5, index=gens.alias)]
    assert as_texts(store, keys, _drugs(200)) == as_texts(store, expected, _drugs(200))
    assert len(keys) == 5
