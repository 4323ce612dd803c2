"""Storage layouts without a server: settings, encodings, the generation's identity, FLOAT16 refusals."""

import json
from dataclasses import asdict
from typing import Any

import numpy as np
import pytest
import redis

from producer.incremental import current_generation
from shared.documents import TEXT_TEMPLATE_VERSION, build_document
from shared.errors import ConfigError
from shared.generations import Registry, choose_generation
from shared.index_schema import index_differences, schema_arguments
from shared.layout import (
    DEFAULT_LAYOUT,
    StorageLayout,
    decode_vector,
    encode_json,
    hash_arguments,
    hash_fields,
)
from shared.models import Generation
from shared.redis_store import RedisDocumentStore
from shared.settings import Settings, get_settings
from shared.wiring import storage_layout
from tests.fakes import FakeGenerations, make_drug

EMBEDDER = "hashing-v1-32"
HASH = StorageLayout("hash")


def test_layout_settings_are_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"DRUGSYNC_STORAGE": "HASH", "DRUGSYNC_VECTOR_TYPE": "float16",
                        "DRUGSYNC_VECTOR_ALGORITHM": "flat", "DRUGSYNC_HNSW_EF_RUNTIME": "50"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)

    layout = storage_layout(Settings())

    assert (layout.identity, layout.hnsw_ef_runtime) == (("hash", "FLOAT16", "FLAT"), 50)
    assert storage_layout(Settings(_env_file=None, storage="json")).storage == "json"


def test_an_unknown_vector_type_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRUGSYNC_VECTOR_TYPE", "INT8")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="DRUGSYNC_VECTOR_TYPE"):
        get_settings()
    get_settings.cache_clear()


def test_json_is_written_with_the_vector_as_numbers_equal_to_the_float32_values() -> None:
    vector = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    document = build_document(make_drug(3), vector, EMBEDDER)

    decoded = json.loads(encode_json(document))

    assert np.array_equal(np.asarray(decoded["embedding"], dtype=np.float32), vector)
    assert {k: v for k, v in decoded.items() if k != "embedding"} == {
        k: v for k, v in document.items() if k != "embedding"
    }


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_vector_that_is_not_finite_is_refused_in_either_layout(bad: float) -> None:
    vector = np.ones(8, dtype=np.float32)
    vector[3] = bad
    document = build_document(make_drug(3), vector, EMBEDDER)
    with pytest.raises(ValueError, match="NaN or infinity"):
        encode_json(document)
    with pytest.raises(ValueError, match="NaN or infinity"):
        hash_fields(document, HASH)


def test_a_float16_hash_vector_that_overflows_half_precision_is_refused() -> None:
    document = build_document(make_drug(3), np.full(8, 1e6, dtype=np.float32), EMBEDDER)
    with pytest.raises(ValueError, match="overflows"):
        hash_fields(document, StorageLayout("hash", "FLOAT16"))


@pytest.mark.parametrize(("vector_type", "width"), [("FLOAT32", 4), ("FLOAT16", 2)])
def test_a_hash_holds_text_as_is_numbers_in_decimal_and_the_vector_as_little_endian_bytes(
    vector_type: str, width: int
) -> None:
    layout = StorageLayout("hash", vector_type)  # type: ignore[arg-type]
    vector = np.linspace(-1, 1, 8, dtype=np.float32)
    document = build_document(make_drug(3, brand_name=None), vector, EMBEDDER)

    pairs = hash_fields(document, layout)
    fields = dict(zip(pairs[::2], pairs[1::2], strict=True))

    assert "brand_name" not in fields  # NULL: absent, as the index treats a JSON null
    assert (fields["id"], fields["name"]) == ("3", "Amoxicillin 500 mg capsule")
    raw = fields["embedding"]
    assert isinstance(raw, bytes)
    assert len(raw) == 8 * width
    little = "<f4" if width == 4 else "<f2"
    assert np.array_equal(np.frombuffer(raw, dtype=little), vector.astype(little))
    np.testing.assert_allclose(decode_vector(raw, layout), vector, atol=1e-3)


def test_the_schema_names_hash_fields_by_their_names_and_json_fields_by_their_paths() -> None:
    json_schema = schema_arguments(8)
    hash_schema = schema_arguments(8, StorageLayout("hash", "FLOAT16", "FLAT"))

    assert json_schema[:3] == ["$.id", "AS", "id"]
    assert hash_schema[:3] == ["id", "AS", "id"]
    assert json_schema[json_schema.index("VECTOR") + 1 :][:1] == ["HNSW"]
    flat = hash_schema[hash_schema.index("VECTOR") + 1 :]
    assert flat == ["FLAT", "6", "TYPE", "FLOAT16", "DIM", "8", "DISTANCE_METRIC", "COSINE"]
    assert "EF_RUNTIME" in json_schema  # the index's default for readers that send none


def _generation(number: int, state: str = "live", **fields: Any) -> Generation:
    return Generation(number, EMBEDDER, 32, TEXT_TEMPLATE_VERSION, f"d@{number}:", f"i@{number}", None,
                      state, "", **fields)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(
    ("generation", "layout", "expected"),
    [
        (_generation(1), DEFAULT_LAYOUT, ("full", 1)),
        (_generation(1), HASH, ("rebuild", None)),  # another storage: a new generation, by itself
        (_generation(1), StorageLayout(vector_type="FLOAT16"), ("rebuild", None)),
        (_generation(1), StorageLayout(algorithm="FLAT"), ("rebuild", None)),
        (_generation(1), StorageLayout(hnsw_m=32, hnsw_ef_construction=64, hnsw_ef_runtime=99), ("full", 1)),
        (_generation(1, storage="hash"), HASH, ("full", 1)),
    ],
)
def test_a_full_run_rebuilds_when_the_layout_differs_and_only_then(
    generation: Generation, layout: StorageLayout, expected: tuple[str, int | None]
) -> None:
    choice = choose_generation("full", Registry(1, {1: generation}), EMBEDDER, layout)
    assert (choice.mode, choice.number) == expected


def test_a_registry_from_before_layouts_reads_as_json_float32_hnsw() -> None:
    recorded = {
        k: v for k, v in asdict(_generation(1)).items() if k not in ("storage", "vector_type", "algorithm")
    }
    generation = Generation(**json.loads(json.dumps(recorded)))
    assert generation.layout_identity == DEFAULT_LAYOUT.identity


def test_an_incremental_run_is_refused_on_a_generation_of_another_layout() -> None:
    generations = FakeGenerations()
    generations.registry = Registry(1, {1: _generation(1)})
    generations.layout = HASH
    with pytest.raises(ConfigError, match=r"stored as json FLOAT32 HNSW.*stores \(hash FLOAT32 HNSW\)"):
        current_generation(generations, EMBEDDER)


def test_a_begun_generation_records_the_layout_it_is_made_of() -> None:
    generations = FakeGenerations()
    generations.layout = StorageLayout("hash", "FLOAT16", "FLAT")
    assert generations.begin(EMBEDDER, 32, "run").layout_identity == ("hash", "FLOAT16", "FLAT")


class RefusingServer:
    """A server whose FT.CREATE answers with `reply` (as MemoryDB does to a vector type it lacks)."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.connection_pool = None

    def info(self, section: str) -> dict[str, str]:
        return {"maxmemory_policy": "noeviction"}

    def execute_command(self, *args: Any) -> Any:
        if args[0] == "FT.INFO":
            raise redis.ResponseError("Unknown index name")
        if args[0] == "FT.CREATE":
            raise redis.ResponseError(self.reply)
        return "sha"


@pytest.mark.parametrize(
    "reply",
    [
        "Unknown argument `FLOAT16`",  # valkey-search's (and MemoryDB's) enum parser
        "Invalid field type for field `embedding`: Unknown argument `FLOAT16`",
    ],
)
def test_a_server_without_float16_is_refused_naming_the_setting_to_change(reply: str) -> None:
    store = RedisDocumentStore(RefusingServer(reply), "d:", "i", layout=StorageLayout(vector_type="FLOAT16"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="DRUGSYNC_VECTOR_TYPE=FLOAT32") as refused:
        store.ensure_index(8)
    assert "FLOAT16" in str(refused.value)


def test_another_create_error_with_float32_is_not_blamed_on_the_vector_type() -> None:
    store = RedisDocumentStore(RefusingServer("Unknown argument `FLOAT32`"), "d:", "i")  # type: ignore[arg-type]
    with pytest.raises(redis.ResponseError):
        store.ensure_index(8)


def test_index_differences_name_the_key_type_data_type_and_algorithm() -> None:
    info = {
        "index_definition": ["key_type", "JSON", "prefixes", ["d:"]],
        "attributes": [
            ["identifier", "$.embedding", "attribute", "embedding", "type", "VECTOR", "algorithm", "HNSW",
             "data_type", "FLOAT32", "dim", 8, "distance_metric", "COSINE"],
        ],
    }  # fmt: skip
    differences = " | ".join(index_differences(info, "d:", 8, StorageLayout("hash", "FLOAT16", "FLAT")))
    assert "indexes JSON keys, not HASH" in differences
    assert "it has no field embedding" in differences
    json_differences = " | ".join(index_differences(info, "d:", 8, StorageLayout("json", "FLOAT16", "FLAT")))
    assert "data_type is FLOAT32, not FLOAT16" in json_differences
    assert "algorithm is HNSW, not FLAT" in json_differences


def test_the_hash_script_gets_the_text_fields_as_one_nul_joined_argument_and_the_vector_apart() -> None:
    vector = np.ones(4, dtype=np.float32)
    document = build_document(make_drug(3, brand_name=""), vector, EMBEDDER)

    text, vector_field, raw = hash_arguments(document, HASH)

    parts = str(text).split("\0")
    fields = dict(zip(parts[::2], parts[1::2], strict=True))
    assert (fields["id"], fields["brand_name"]) == ("3", "")  # an empty text is a value, kept
    assert "embedding" not in fields
    assert (vector_field, raw) == ("embedding", vector.tobytes())


def test_a_text_holding_a_nul_character_is_refused_for_a_hash() -> None:
    document = build_document(make_drug(3, name="bad\0name"), np.ones(4, dtype=np.float32), EMBEDDER)
    with pytest.raises(ValueError, match="NUL"):
        hash_arguments(document, HASH)


class RecordingServer:
    """Answers FT.SEARCH with no hits and keeps the query it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.connection_pool = None

    def execute_command(self, *args: Any) -> Any:
        self.sent.append(args)
        return [0]


@pytest.mark.parametrize(
    ("layout", "tuning", "blob_bytes"),
    [
        (StorageLayout(hnsw_ef_runtime=77), " EF_RUNTIME 77 ", 4 * 8),
        (StorageLayout("hash", "FLOAT16", "FLAT"), " ", 2 * 8),  # FLAT takes no EF_RUNTIME
    ],
)
def test_a_query_carries_ef_runtime_for_hnsw_and_its_vector_in_the_index_type(
    layout: StorageLayout, tuning: str, blob_bytes: int
) -> None:
    server = RecordingServer()
    store = RedisDocumentStore(server, "d:", "i", layout=layout)  # type: ignore[arg-type]

    store.search(np.ones(8, dtype=np.float32), 3)

    (command,) = server.sent
    assert command[2] == f"*=>[KNN 3 @embedding $vector{tuning}AS distance]"
    assert len(command[command.index("vector") + 1]) == blob_bytes


def test_a_default_layout_generation_is_recorded_as_code_from_before_layouts_reads_it() -> None:
    from shared.generations import _encode

    before = {"number", "embedder", "dimension", "template_version", "prefix", "index", "run_id", "state",
              "created_at"}  # fmt: skip
    assert set(json.loads(_encode(_generation(1)))) == before
    hashed = json.loads(_encode(_generation(2, storage="hash", vector_type="FLOAT16")))
    assert (hashed["storage"], hashed["vector_type"], hashed["algorithm"]) == ("hash", "FLOAT16", "HNSW")
    assert Generation(**hashed).layout_identity == ("hash", "FLOAT16", "HNSW")
