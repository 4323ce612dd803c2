"""The index, KNN search and conditional writes against the real Redis Stack."""

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import redis

from console.seed import synthetic_drugs
from shared.documents import build_document, build_embedding_text, fingerprint
from shared.embedders.hashing import HashingEmbedder
from shared.errors import ConfigError, UnavailableError
from shared.index_schema import index_differences, schema_arguments
from shared.models import TEXT_FIELDS, Drug
from shared.redis_store import NEWEST_WINS_SHA, RedisDocumentStore, connect_redis
from shared.settings import get_settings
from shared.wiring import build_store
from tests.conftest import Isolated
from tests.fakes import make_drug, unit_vector
from tests.store_cases import out_of_memory, play_newest_wins, read_only, refused

pytestmark = pytest.mark.integration


def _drugs(count: int) -> list[Drug]:
    drugs = []
    for drug_id, *texts, eligible, updated_at in synthetic_drugs(count):
        if eligible:
            drugs.append(
                Drug(id=drug_id, updated_at=updated_at, **dict(zip(TEXT_FIELDS, texts, strict=True)))
            )
    return drugs


def write_drugs(drugs: list[Drug], embedder: HashingEmbedder, store) -> None:
    vectors = embedder.embed_texts([build_embedding_text(drug) for drug in drugs])
    documents = [(d.id, build_document(d, v, embedder.name)) for d, v in zip(drugs, vectors, strict=True)]
    result = store.write_documents(documents)
    assert (result.failures, result.stale_skipped) == ([], 0)


def test_index_creation_is_idempotent_even_when_concurrent(test_env: Isolated) -> None:
    stores = [build_store(test_env.settings) for _ in range(4)]
    threads = [threading.Thread(target=store.ensure_index, args=(128,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].index_dimension() == 128
    stores[0].ensure_index(128)


def test_an_index_of_another_dimension_is_refused_with_advice(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    store.ensure_index(128)
    with pytest.raises(ConfigError, match=r"128-dimensional.*makes 256.*DRUGSYNC_INDEX_NAME"):
        store.ensure_index(256)


def test_search_ranks_the_drug_searched_for_first(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    embedder = HashingEmbedder(128, batch_size=256)
    store.ensure_index(128)
    drugs = _drugs(3000)
    write_drugs(drugs, embedder, store)
    deadline = time.monotonic() + 30
    while store.indexed_documents()[0] < len(drugs) and time.monotonic() < deadline:
        time.sleep(0.1)

    hits = store.search(embedder.embed_texts(["amoxicillin 500 mg capsule"])[0], 5)

    assert store.indexed_documents() == (len(drugs), 0)
    assert len(hits) == 5
    for hit in hits:
        assert hit.fields["generic_name"] == "amoxicillin"
        assert hit.fields["dosage_form"] == "capsule"
        assert "500 mg" in hit.fields["name"]
    assert hits[0].score >= hits[-1].score


def test_clear_removes_the_index_and_every_document_under_the_prefix(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    store.ensure_index(128)
    write_drugs(_drugs(300), HashingEmbedder(128, batch_size=100), store)

    removed = store.clear()

    assert removed == len(_drugs(300))
    assert store.count_documents() == 0
    assert store.index_info() is None


def _ours(dimension: int = 128) -> list[str]:
    return schema_arguments(dimension)


def _replaced(old: str, new: str) -> list[str]:
    return [new if argument == old else argument for argument in _ours()]


# Indexes someone else could have built under our index name: (FT.CREATE arguments after the name,
# with {prefix} for our key prefix) and the difference the refusal must name.
FOREIGN_INDEXES = {
    "on HASH": (["ON", "HASH", "PREFIX", "1", "{prefix}", "SCHEMA", *_ours()], "indexes HASH keys, not JSON"),
    "another prefix": (["ON", "JSON", "PREFIX", "1", "other:", "SCHEMA", *_ours()], "prefixes are ['other:']"),
    "two prefixes": (
        ["ON", "JSON", "PREFIX", "2", "{prefix}", "other:", "SCHEMA", *_ours()],
        "prefixes are ['{prefix}', 'other:']",
    ),
    "no $.embedding": (
        ["ON", "JSON", "PREFIX", "1", "{prefix}", "SCHEMA", *_ours()[: _ours().index("$.embedding")]],
        "no field $.embedding",
    ),
    "L2 metric": (["ON", "JSON", "PREFIX", "1", "{prefix}", "SCHEMA", *_replaced("COSINE", "L2")], "distance_metric is L2"),
    "FLOAT64": (["ON", "JSON", "PREFIX", "1", "{prefix}", "SCHEMA", *_replaced("FLOAT32", "FLOAT64")], "data_type is FLOAT64"),
    "another dimension": (
        ["ON", "JSON", "PREFIX", "1", "{prefix}", "SCHEMA", *_ours(256)],
        "holds 256-dimensional vectors but the embedder makes 128",
    ),
    "ndc as TEXT": (["ON", "JSON", "PREFIX", "1", "{prefix}", "SCHEMA", *_replaced("TAG", "TEXT")], "$.ndc is TEXT AS ndc, not TAG AS ndc"),
    "a field we do not make": (
        ["ON", "JSON", "PREFIX", "1", "{prefix}", "SCHEMA", *_ours(), "$.owner", "AS", "owner", "TAG"],
        "a field $.owner we do not make",
    ),
    "a FILTER": (
        ["ON", "JSON", "PREFIX", "1", "{prefix}", "FILTER", "@id < 0", "SCHEMA", *_ours()],
        "indexes only documents matching FILTER '@id < 0'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("planted", sorted(FOREIGN_INDEXES))
def test_an_index_that_is_not_ours_is_refused_naming_the_difference(test_env: Isolated, planted: str) -> None:
    settings = test_env.settings
    arguments, difference = FOREIGN_INDEXES[planted]
    prefix = settings.key_prefix
    client = connect_redis(settings.redis_url.get_secret_value())  # type: ignore[union-attr]
    planted_arguments = [argument.replace("{prefix}", prefix) for argument in arguments]
    client.execute_command("FT.CREATE", settings.index_name, *planted_arguments)  # type: ignore[no-untyped-call]
    store = build_store(settings)

    with pytest.raises(ConfigError) as refused:
        store.ensure_index(128)

    message = str(refused.value)
    assert difference.replace("{prefix}", prefix) in message
    assert f"FT.DROPINDEX {settings.index_name}" in message
    assert "DRUGSYNC_INDEX_NAME" in message
    assert store.index_info() is not None  # refused, never dropped


def test_our_own_index_is_accepted_again_and_again(test_env: Isolated) -> None:
    first, second = build_store(test_env.settings), build_store(test_env.settings)
    first.ensure_index(128)

    second.ensure_index(128)
    first.ensure_index(128)

    assert index_differences(second.index_info() or {}, test_env.settings.key_prefix, 128) == []


@pytest.fixture
def set_eviction_policy(test_env: Isolated) -> Iterator[Callable[[str], object]]:
    """CONFIG SET maxmemory-policy on the session's server, put back as it was after the test."""
    client = connect_redis(test_env.settings.redis_url.get_secret_value())  # type: ignore[union-attr]
    original = str(client.config_get("maxmemory-policy")["maxmemory-policy"])
    yield lambda policy: client.config_set("maxmemory-policy", policy)
    client.config_set("maxmemory-policy", original)


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_an_allkeys_eviction_policy_is_refused_before_the_index_is_made(
    test_env: Isolated, set_eviction_policy: Callable[[str], object], policy: str
) -> None:
    set_eviction_policy(policy)
    store = build_store(test_env.settings)

    with pytest.raises(ConfigError, match=rf"maxmemory-policy is {policy}.*DRUGSYNC_ALLOW_EVICTION=true"):
        store.ensure_index(128)

    assert store.index_info() is None


def test_allow_eviction_accepts_an_allkeys_policy_with_a_warning(
    test_env: Isolated,
    set_eviction_policy: Callable[[str], object],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    set_eviction_policy("allkeys-lru")
    monkeypatch.setenv("DRUGSYNC_ALLOW_EVICTION", "true")
    get_settings.cache_clear()
    store = build_store(get_settings())

    with caplog.at_level(logging.WARNING):
        store.ensure_index(128)

    assert store.index_dimension() == 128
    assert any("allkeys-lru" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("policy", "warned"), [("volatile-lru", True), ("volatile-ttl", True), ("noeviction", False)]
)
def test_a_volatile_policy_is_accepted_with_a_warning_and_noeviction_silently(
    test_env: Isolated,
    set_eviction_policy: Callable[[str], object],
    caplog: pytest.LogCaptureFixture,
    policy: str,
    warned: bool,
) -> None:
    set_eviction_policy(policy)
    store = build_store(test_env.settings)

    with caplog.at_level(logging.WARNING):
        store.ensure_index(128)

    assert store.index_dimension() == 128
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"maxmemory-policy is {policy}" in w for w in warnings) is warned


def _server(test_env: Isolated) -> redis.Redis:
    return redis.Redis.from_url(test_env.env["REDIS_URL"], decode_responses=True)


def _stored(client: redis.Redis, store: RedisDocumentStore, drug_id: int) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(client.execute_command("JSON.GET", store.key(drug_id), "$"))[0]  # type: ignore[no-untyped-call]
    return document


def test_documents_are_json_under_deterministic_keys(test_env: Isolated) -> None:
    client = _server(test_env)
    store = build_store(test_env.settings)
    drugs = [make_drug(i, read_at=datetime(2026, 1, 1, tzinfo=UTC)) for i in (5, 6, 7)]
    documents = [(d.id, build_document(d, unit_vector(8), "e1")) for d in drugs]

    result = store.write_documents(documents)

    assert result.failures == []
    assert sorted(client.keys(f"{store.key_prefix}*")) == [store.key(5), store.key(6), store.key(7)]
    stored = _stored(client, store, 6)
    assert stored["id"] == 6
    assert stored["fingerprint"] == fingerprint(drugs[1], "e1")
    assert stored["version"] == 1_767_225_600_000_000  # read at 2026-01-01, in microseconds
    np.testing.assert_allclose(stored["embedding"], unit_vector(8), rtol=1e-6)
    assert store.count_documents() == 3


def test_stored_fingerprints_name_only_the_documents_that_exist(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    drugs = [make_drug(i, read_at=datetime(2026, 1, 1, tzinfo=UTC)) for i in (5, 6, 2**63 - 1)]
    store.write_documents([(d.id, build_document(d, unit_vector(8), "e1")) for d in drugs])

    found = store.stored_fingerprints([5, 6, 7, 2**63 - 1])

    assert found == {d.id: fingerprint(d, "e1") for d in drugs}  # 7 is not stored: absent, not ""
    assert store.stored_fingerprints([]) == {}


def test_the_newest_version_wins_on_the_server_whatever_order_writes_arrive_in(test_env: Isolated) -> None:
    client = _server(test_env)
    store = build_store(test_env.settings)

    play_newest_wins(store, lambda _: unit_vector(8), lambda i: _stored(client, store, i)["name"])


def test_documents_named_absent_are_created_without_the_script(test_env: Isolated) -> None:
    client = _server(test_env)
    store = build_store(test_env.settings)
    documents = [(i, build_document(make_drug(i), unit_vector(8), "e1")) for i in range(1, 6)]
    before = client.info("commandstats")

    result = store.write_documents(documents, absent={1, 2, 3, 4, 5})

    after = client.info("commandstats")
    assert (result.failures, result.stale_skipped) == ([], 0)
    assert [_stored(client, store, i)["id"] for i in range(1, 6)] == [1, 2, 3, 4, 5]
    assert _calls(after, "evalsha") - _calls(before, "evalsha") == 0
    assert _calls(after, "json.set") - _calls(before, "json.set") == 5


def _calls(stats: dict[str, Any], command: str) -> int:
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_wrong_absent_hint_never_lets_an_older_document_win(test_env: Isolated) -> None:
    """Every stored document is named absent: each create is refused and the script decides, on a
    server that has lost the script meanwhile."""
    client = _server(test_env)
    store = build_store(test_env.settings)

    play_newest_wins(
        store, lambda _: unit_vector(8), lambda i: _stored(client, store, i)["name"],
        late_absent=True, between=client.script_flush,
    )  # fmt: skip


def test_a_key_of_another_type_named_absent_is_a_failure_and_left_alone(test_env: Isolated) -> None:
    client = _server(test_env)
    store = build_store(test_env.settings)
    client.set(store.key(4), "someone else's")

    result = store.write_documents(
        [(i, build_document(make_drug(i), unit_vector(8), "e1")) for i in (3, 4)], absent={3, 4}
    )

    assert [failure.drug_id for failure in result.failures] == [4]
    assert "wrong Redis type" in result.failures[0].error  # RedisJSON's words for WRONGTYPE
    assert client.get(store.key(4)) == "someone else's"
    assert _stored(client, store, 3)["id"] == 3


def test_a_skipped_stale_write_leaves_the_newer_document_indexed_and_found(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    embedder = HashingEmbedder(128, batch_size=100)
    store.ensure_index(128)
    newer = [
        make_drug(i, name=f"Lisinopril {i} mg tablet", read_at=datetime(2026, 6, 1)) for i in range(1, 51)
    ]
    older = [
        make_drug(i, name=f"Amoxicillin {i} mg capsule", read_at=datetime(2026, 1, 1)) for i in range(1, 51)
    ]
    write_drugs(newer, embedder, store)

    vectors = embedder.embed_texts([build_embedding_text(drug) for drug in older])
    late = store.write_documents(
        [(d.id, build_document(d, v, embedder.name)) for d, v in zip(older, vectors, strict=True)]
    )
    store.wait_until_indexed(50, seconds=30)
    hits = store.search(embedder.embed_texts([build_embedding_text(newer[6])])[0], 3)

    assert late.stale_skipped == 50
    assert store.indexed_documents() == (50, 0)
    assert hits[0].drug_id == 7
    assert hits[0].fields["name"] == "Lisinopril 7 mg tablet"


def test_a_lost_script_cache_is_loaded_again_and_no_write_is_lost(test_env: Isolated) -> None:
    client = _server(test_env)
    store = build_store(test_env.settings)
    client.script_flush()  # as after a restart or a failover to a node that never ran the script

    result = store.write_documents(
        [(i, build_document(make_drug(i), unit_vector(8), "e1")) for i in range(1, 4)]
    )

    assert result.failures == []
    assert store.count_documents() == 3
    assert client.script_exists(NEWEST_WINS_SHA) == [True]  # later batches go by EVALSHA again


def _written(store: RedisDocumentStore, ids: range, name: str = "Amoxicillin 500 mg capsule") -> list[Any]:
    return [(i, build_document(make_drug(i, name=name), unit_vector(8), "e1")) for i in ids]


def test_an_out_of_memory_server_fails_the_write_as_retryable_and_keeps_its_data(test_env: Isolated) -> None:
    client = _server(test_env)
    store = build_store(test_env.settings)
    assert store.write_documents(_written(store, range(1, 11))).failures == []
    before = refused(client, "OOM")

    with out_of_memory(client), pytest.raises(UnavailableError, match="OutOfMemoryError"):
        store.write_documents(_written(store, range(1, 21), name="Rewritten"))

    assert refused(client, "OOM") > before  # the server did refuse, and no row was failed for it
    assert store.count_documents() == 10
    assert store.write_documents(_written(store, range(1, 21))).failures == []  # after the window
    assert store.count_documents() == 20


def test_a_read_only_server_fails_writes_as_retryable_and_reconnects(test_env: Isolated) -> None:
    client = _server(test_env)
    own = connect_redis(test_env.env["REDIS_URL"])
    store = RedisDocumentStore(own, test_env.settings.key_prefix, test_env.settings.index_name)
    store.ensure_index(8)
    assert store.write_documents(_written(store, range(1, 11))).failures == []
    connection = own.client_id()

    with read_only(client):
        with pytest.raises(UnavailableError, match="ReadOnlyError"):
            store.write_documents(_written(store, range(1, 21), name="Rewritten"))
        # the pool was dropped: the next call opens a new connection, resolving the endpoint again
        assert own.client_id() != connection
        with pytest.raises(UnavailableError, match="deleting 1 documents"):
            store.delete_documents([1])
        with pytest.raises(UnavailableError, match="checking the index"):
            store.scratch("ro-scratch").ensure_index(8)

    assert store.count_documents() == 10  # a replica that never synced kept its data
    assert _stored(client, store, 1)["name"] == "Amoxicillin 500 mg capsule"
    assert store.write_documents(_written(store, range(1, 21))).failures == []
    assert store.count_documents() == 20


def test_a_redis_user_who_may_not_run_scripts_is_refused_before_any_write(test_env: Isolated) -> None:
    # GIVEN an ACL user with every command but scripting (EVALSHA is how drugsync writes)
    admin = _server(test_env)
    user = f"noscripts{uuid.uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-@scripting")  # type: ignore[no-untyped-call]
    try:
        port = admin.connection_pool.connection_kwargs["port"]
        store = RedisDocumentStore(connect_redis(f"redis://{user}:pw@127.0.0.1:{port}/0"), "nos:", "idx:nos")

        with pytest.raises(ConfigError, match=r"\+@scripting"):
            store.ensure_index(128)
        # and a write tried anyway fails as the server refusing (retried, deferred), not as a bad row
        with pytest.raises(UnavailableError, match="NoPermissionError"):
            store.write_documents([(1, build_document(make_drug(1), unit_vector(128), "e1"))])
    finally:
        admin.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("denied", "refused_by"),
    [("-json.set", "write"), ("-info", "ensure_index")],
)
def test_a_redis_user_without_a_command_drugsync_needs_is_never_a_bad_row(
    test_env: Isolated, denied: str, refused_by: str
) -> None:
    admin = _server(test_env)
    user = f"lacks{uuid.uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", denied)  # type: ignore[no-untyped-call]
    try:
        port = admin.connection_pool.connection_kwargs["port"]
        store = RedisDocumentStore(connect_redis(f"redis://{user}:pw@127.0.0.1:{port}/0"), "lk:", "idx:lk")
        if refused_by == "ensure_index":
            with pytest.raises(ConfigError, match="may not do what drugsync needs"):
                store.ensure_index(128)
        else:
            # the script may run, JSON.SET inside it may not: the server refusing, retried and deferred
            with pytest.raises(UnavailableError, match="ACL failure in script"):
                store.write_documents([(1, build_document(make_drug(1), unit_vector(128), "e1"))])
    finally:
        admin.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]


def test_search_names_drugs_by_their_exact_ids_at_both_ends_of_bigint(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    store.ensure_index(128)
    embedder = HashingEmbedder(128, batch_size=10)
    ids = [-(2**63), 2**63 - 1, 2**53 + 1]  # beyond what the NUMERIC index (a double) holds exactly
    drugs = [make_drug(drug_id, name=f"Zedoarin {k} mg tablet") for k, drug_id in enumerate(ids)]
    write_drugs(drugs, embedder, store)
    store.wait_until_indexed(3, seconds=30)

    hits = store.search(embedder.embed_texts(["Zedoarin 1 mg tablet"])[0], 3)

    assert sorted(hit.drug_id for hit in hits) == sorted(ids)
    assert {hit.fields["id"] for hit in hits} == {str(drug_id) for drug_id in ids}
