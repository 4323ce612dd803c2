"""How documents are stored and indexed: JSON or HASH, the vector's type, the index algorithm.

JSON keeps a document readable with JSON.GET; HASH keeps the vector as raw little-endian bytes, about
a quarter of a JSON number array's memory at 1,024 dimensions (README, "Redis memory"). FLOAT16 halves
the vector again, on servers that have it (Redis Stack 7.4 / Search 2.10 do; MemoryDB is FLOAT32 only).
Both layouts are indexed under the same aliases, so queries are written once.
"""

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import numpy as np
import orjson

from shared.errors import ConfigError

Storage = Literal["json", "hash"]
VectorType = Literal["FLOAT32", "FLOAT16"]
Algorithm = Literal["HNSW", "FLAT"]
# Explicit little-endian: RediSearch reads vector blobs as little-endian whatever the client's machine.
DTYPES: dict[str, np.dtype[Any]] = {"FLOAT32": np.dtype("<f4"), "FLOAT16": np.dtype("<f2")}
VECTOR_FIELD = "embedding"
Identity = tuple[str, str, str]
STORAGES = ("json", "hash")
ALGORITHMS = ("HNSW", "FLAT")


@dataclass(frozen=True)
class StorageLayout:
    """DRUGSYNC_STORAGE, _VECTOR_TYPE, _VECTOR_ALGORITHM and the HNSW parameters, as one value."""

    storage: Storage = "json"
    vector_type: VectorType = "FLOAT32"
    algorithm: Algorithm = "HNSW"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_runtime: int = 10

    @property
    def identity(self) -> Identity:
        """What a generation's documents and index are made of; M and EF_* only tune the graph."""
        return (self.storage, self.vector_type, self.algorithm)

    def with_identity(self, identity: Identity) -> "StorageLayout":
        """This layout's HNSW tuning with another generation's storage, vector type and algorithm."""
        storage, vector_type, algorithm = identity
        if storage not in STORAGES or vector_type not in DTYPES or algorithm not in ALGORITHMS:
            raise ConfigError(
                f"a generation is recorded as {' '.join(identity)}, a layout this drugsync does not know"
            )
        return replace(
            self, storage=cast(Storage, storage), vector_type=cast(VectorType, vector_type),
            algorithm=cast(Algorithm, algorithm),
        )  # fmt: skip

    def describe(self) -> str:
        return " ".join(self.identity)

    def vector_bytes(self, vector: Any) -> bytes:
        """The vector as the index reads a HASH field or a query parameter: packed little-endian floats."""
        with np.errstate(over="ignore"):  # a value beyond half precision becomes inf, refused below
            packed = np.asarray(vector, dtype=DTYPES[self.vector_type])
        _refuse_non_finite(packed)
        return packed.tobytes()


DEFAULT_LAYOUT = StorageLayout()


def encode_json(document: dict[str, Any]) -> bytes:
    """The JSON text of a document, its numpy vector written directly by orjson (no list of floats).

    orjson writes NaN and infinity as null, which the index would then fail to read: refused here,
    as json.dumps(allow_nan=False) did.
    """
    vector = document.get(VECTOR_FIELD)
    if vector is not None:
        _refuse_non_finite(vector if isinstance(vector, np.ndarray) else np.asarray(vector, dtype=np.float64))
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def hash_fields(document: dict[str, Any], layout: StorageLayout) -> list[str | bytes]:
    """HSET's field/value pairs of a document: text as is, integers in decimal, the vector as bytes.

    A None field is left out: absent in a HASH, as a JSON null is, it is not indexed.
    """
    text, vector = _hash_parts(document, layout)
    return [*text, *vector]


def hash_arguments(document: dict[str, Any], layout: StorageLayout) -> list[str | bytes]:
    """The HASH script's arguments after the version: text pairs joined by NUL, then the vector pair."""
    text, vector = _hash_parts(document, layout)
    return ["\0".join(text), *vector]


def _hash_parts(document: dict[str, Any], layout: StorageLayout) -> tuple[list[str], list[str | bytes]]:
    text: list[str] = []
    vector: list[str | bytes] = []
    for name, value in document.items():
        if value is None:
            continue
        if name == VECTOR_FIELD:
            vector = [name, layout.vector_bytes(value)]
        elif isinstance(value, str):
            if "\0" in value:  # Postgres text never holds one; the HASH script splits on it
                raise ValueError(f"field {name!r} holds a NUL character")
            text += [name, value]
        elif isinstance(value, int) and not isinstance(value, bool):
            text += [name, str(value)]
        elif isinstance(value, float) and math.isfinite(value):
            text += [name, repr(value)]
        else:
            raise TypeError(f"field {name!r} holds {type(value).__name__}, which a HASH cannot store")
    return text, vector


def decode_vector(raw: bytes, layout: StorageLayout) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A HASH's vector field back as floats (for tests and tools)."""
    return np.frombuffer(raw, dtype=DTYPES[layout.vector_type]).astype(np.float32)


def _refuse_non_finite(vector: np.ndarray[Any, Any]) -> None:
    if vector.size and not np.isfinite(vector).all():
        raise ValueError("the embedding holds NaN or infinity (or overflows the vector type)")
