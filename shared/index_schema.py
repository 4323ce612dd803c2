"""The RediSearch index drugsync builds, as data: the FT.CREATE schema, and how an existing index differs.

An index of the same name built by someone else (another prefix, other documents, another metric)
would accept our writes and answer our searches wrongly, so an existing index is compared field by
field with what we would create, from its FT.INFO reply (RESP2: flat [key, value, ...] lists).
JSON and HASH documents are indexed under the same aliases: a JSON field's identifier is its path
(`$.name`), a HASH field's its name (`name`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.layout import DEFAULT_LAYOUT, VECTOR_FIELD, Storage, StorageLayout

VECTOR_METRIC = "COSINE"


@dataclass(frozen=True)
class IndexField:
    """One indexed JSON path; the schema is data so creating it is one loop."""

    path: str
    alias: str
    kind: str
    options: tuple[str, ...] = ()

    def identifier(self, storage: Storage) -> str:
        return self.path if storage == "json" else self.alias


# Text fields for full-text filters, tags for exact filters; the vector field is added with its
# dimension at creation time.
INDEX_FIELDS = (
    IndexField("$.id", "id", "NUMERIC", ("SORTABLE",)),
    IndexField("$.name", "name", "TEXT", ("WEIGHT", "2.0")),
    IndexField("$.generic_name", "generic_name", "TEXT"),
    IndexField("$.brand_name", "brand_name", "TEXT"),
    IndexField("$.ndc", "ndc", "TAG"),
    IndexField("$.dosage_form", "dosage_form", "TAG"),
    IndexField("$.route", "route", "TAG"),
    IndexField("$.manufacturer", "manufacturer", "TAG"),
    IndexField("$.fingerprint", "fingerprint", "TAG"),
)
VECTOR_PATH = f"$.{VECTOR_FIELD}"
VECTOR_INDEX_FIELD = IndexField(VECTOR_PATH, VECTOR_FIELD, "VECTOR")


def vector_identifier(storage: Storage) -> str:
    return VECTOR_INDEX_FIELD.identifier(storage)


def schema_arguments(dimension: int, layout: StorageLayout = DEFAULT_LAYOUT) -> list[str]:
    """FT.CREATE's SCHEMA arguments: every field of INDEX_FIELDS, then the vector field.

    EF_RUNTIME becomes the index's default for readers that do not send their own; drugsync sends it.
    """
    vector = ["TYPE", layout.vector_type, "DIM", str(dimension), "DISTANCE_METRIC", VECTOR_METRIC]
    if layout.algorithm == "HNSW":
        vector += ["M", str(layout.hnsw_m), "EF_CONSTRUCTION", str(layout.hnsw_ef_construction)]
        vector += ["EF_RUNTIME", str(layout.hnsw_ef_runtime)]
    schema: list[str] = []
    for field in INDEX_FIELDS:
        schema += [field.identifier(layout.storage), "AS", field.alias, field.kind, *field.options]
    identifier = vector_identifier(layout.storage)
    return [*schema, identifier, "AS", VECTOR_FIELD, "VECTOR", layout.algorithm, str(len(vector)), *vector]


def index_differences(
    info: dict[str, Any], key_prefix: str, dimension: int, layout: StorageLayout = DEFAULT_LAYOUT
) -> list[str]:
    """How an index (its FT.INFO as a dict) differs from the one we create; empty when it is ours.

    HNSW's M and EF_CONSTRUCTION are tuning, not meaning: a changed setting applies to new indexes.
    """
    definition = pairs_to_dict(info.get("index_definition", []))
    differences = []
    key_type = str(definition.get("key_type", "?")).upper()
    if key_type != layout.storage.upper():
        differences.append(f"it indexes {key_type} keys, not {layout.storage.upper()}")
    if definition.get("filter"):
        differences.append(f"it indexes only documents matching FILTER {decode(definition['filter'])!r}")
    prefixes = [decode(prefix) for prefix in definition.get("prefixes", [])]
    if prefixes != [key_prefix]:
        differences.append(f"its key prefixes are {prefixes}, not [{key_prefix!r}]")
    attributes = [pairs_to_dict(raw) for raw in info.get("attributes", [])]
    found = {str(attribute.get("identifier")): attribute for attribute in attributes}
    differences += _field_differences(found, layout.storage)
    vector = found.get(vector_identifier(layout.storage))
    if vector is not None and str(vector.get("type", "")).upper() == "VECTOR":
        differences += _vector_differences(vector, dimension, layout)
    return differences


def _field_differences(found: dict[str, dict[str, Any]], storage: Storage) -> list[str]:
    fields = (*INDEX_FIELDS, VECTOR_INDEX_FIELD)
    expected = {field.identifier(storage): (field.alias, field.kind) for field in fields}
    differences = []
    for path, (alias, kind) in expected.items():
        attribute = found.get(path)
        if attribute is None:
            differences.append(f"it has no field {path}")
            continue
        actual = (str(attribute.get("attribute")), str(attribute.get("type", "?")).upper())
        if actual != (alias, kind):
            differences.append(f"{path} is {actual[1]} AS {actual[0]}, not {kind} AS {alias}")
    differences += [
        f"it has a field {path} we do not make" for path in sorted(found.keys() - expected.keys())
    ]
    return differences


def _vector_differences(vector: dict[str, Any], dimension: int, layout: StorageLayout) -> list[str]:
    expected = {
        "algorithm": layout.algorithm, "data_type": layout.vector_type, "distance_metric": VECTOR_METRIC,
    }  # fmt: skip
    differences = []
    for name, value in expected.items():
        actual = str(vector.get(name, "?")).upper()
        if actual != value:
            differences.append(f"{vector_identifier(layout.storage)} {name} is {actual}, not {value}")
    existing = int(vector.get("dim", 0))
    if existing != dimension:
        differences.append(f"it holds {existing}-dimensional vectors but the embedder makes {dimension}")
    return differences


def decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def pairs_to_dict(raw: Sequence[Any]) -> dict[str, Any]:
    """RESP2 flat [key, value, key, value, ...] replies as a dict with str keys."""
    return {str(decode(raw[i])): decode(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}
