"""Redis adapter: JSON or HASH documents under deterministic keys, behind a RediSearch vector index."""

import itertools
import json
import logging
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import redis
from redis import exceptions as redis_errors

from shared.errors import ConfigError, GenerationMoved, UnavailableError
from shared.index_schema import (
    index_differences,
    pairs_to_dict,
    schema_arguments,
    vector_identifier,
)
from shared.layout import DEFAULT_LAYOUT, VECTOR_FIELD, StorageLayout, encode_json, hash_arguments
from shared.models import BIGINT_MAX, BIGINT_MIN, RowFailure
from shared.newest_wins import HASH_FINGERPRINTS_SCRIPT, JSON_SCRIPT, SCRIPTS, STALE, sha
from shared.ports import Vectors, WriteResult
from shared.redact import remember_secrets
from shared.redis_errors import judge_eviction_policy, raise_server_wide, translate_errors

logger = logging.getLogger(__name__)
_CANONICAL_ID = re.compile(r"^(0|-?[1-9][0-9]*)$")  # how str(int) writes an id into a key

RETURN_FIELDS = ("id", "name", "generic_name", "strength", "dosage_form", "manufacturer", "ndc")


@dataclass(frozen=True)
class SearchHit:
    """One KNN result; score is cosine similarity (1 is identical)."""

    drug_id: int
    score: float
    fields: dict[str, str]


def connect_redis(url: str) -> redis.Redis:
    """A client speaking RESP2: redis-py 8 defaults to RESP3, whose FT.* replies have other shapes.

    A URL redis-py cannot parse is refused without its text: a raw '#', '/' or '@' in the password
    cuts it short, and the parse error would quote the piece that looks like a port.
    """
    remember_secrets(url)
    try:
        return redis.Redis.from_url(
            url, protocol=2, socket_timeout=60, socket_connect_timeout=10, health_check_interval=30
        )
    except ValueError:
        raise ConfigError(
            "the Redis URL (REDIS_URL, or the one in the Redis secret) is not a redis:// or rediss:// URL"
            " redis-py can read;"
            " percent-encode special characters in its password (# as %23, / as %2F, @ as %40)"
        ) from None


NEWEST_WINS_SCRIPT = JSON_SCRIPT  # the JSON layout's, by its former name
NEWEST_WINS_SHA = sha(JSON_SCRIPT)


@dataclass(frozen=True)
class _Write:
    """One document ready for its layout's script: its key and the script's arguments."""

    drug_id: int
    key: str
    arguments: tuple[str | bytes, ...]
    create: bool = False  # JSON.SET NX: the key was missing when last read


class RedisDocumentStore:
    """Documents `{prefix}{id}` and the index over them, both named by settings."""

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        index_name: str,
        write_batch_size: int = 500,
        allow_eviction: bool = False,
        layout: StorageLayout = DEFAULT_LAYOUT,
    ) -> None:
        self._client = client
        self.key_prefix = key_prefix
        self.index_name = index_name
        self.layout = layout
        self._script = SCRIPTS[layout.storage]
        self._script_sha = sha(self._script)
        self._write_batch_size = write_batch_size
        self._allow_eviction = allow_eviction

    @property
    def client(self) -> redis.Redis:
        return self._client

    def key(self, drug_id: int) -> str:
        return f"{self.key_prefix}{drug_id}"

    def at(
        self, key_prefix: str, index_name: str, layout: StorageLayout | None = None
    ) -> "RedisDocumentStore":
        """The same server and settings under another prefix and index (another generation's), in
        `layout` (that generation's) or this store's."""
        return RedisDocumentStore(
            self._client, key_prefix, index_name, write_batch_size=self._write_batch_size,
            allow_eviction=self._allow_eviction, layout=layout or self.layout,
        )  # fmt: skip

    def ensure_index(self, dimension: int) -> None:
        """Create the index if it is missing; refuse one that is not the index drugsync builds.

        Refuses, too, a server whose eviction policy may drop documents of ranges already done.
        """
        try:
            with translate_errors("checking the index", self._client):
                warning = self.check_durability()
                if warning:
                    logger.warning(warning)
                self._load_script()
                if self.index_info() is None:
                    self._create_index(dimension)
                # Compared even after creating: another process may have won the race with its own.
                info = self.index_info() or {}
                differences = index_differences(info, self.key_prefix, dimension, self.layout)
        except UnavailableError as error:
            if isinstance(error.__cause__, redis_errors.NoPermissionError):
                raise ConfigError(
                    f"the Redis user may not do what drugsync needs: {error.__cause__}"
                ) from error
            raise
        if differences:
            raise ConfigError(
                f"index {self.index_name} is not the one drugsync builds: {'; '.join(differences)}."
                f" Drop it with `FT.DROPINDEX {self.index_name}` (its documents are kept) or choose"
                " another DRUGSYNC_INDEX_NAME"
            )

    def _load_script(self) -> None:
        """Load the newest-wins script now: a user who may not run scripts is refused before any write."""
        try:
            _execute(self._client, "SCRIPT", "LOAD", self._script)
        except redis_errors.NoPermissionError as error:
            raise ConfigError(
                "the Redis user may not run scripts (NOPERM): drugsync writes each document through a"
                " small Lua script so that the newest version wins; grant it +@scripting"
                " (EVALSHA, EVAL, SCRIPT LOAD)"
            ) from error

    def eviction_policy(self) -> str:
        """maxmemory-policy from INFO memory: CONFIG GET is disabled on ElastiCache and MemoryDB."""
        with translate_errors("reading the eviction policy", self._client):
            return str(self._client.info("memory").get("maxmemory_policy", "unknown"))

    def check_durability(self) -> str | None:
        """Refuse (ConfigError) an eviction policy that may drop our documents; a warning if it might."""
        return judge_eviction_policy(self.eviction_policy(), self._allow_eviction)

    def _create_index(self, dimension: int) -> None:
        layout = self.layout
        try:
            _execute(
                self._client, "FT.CREATE", self.index_name, "ON", layout.storage.upper(), "PREFIX", "1",
                self.key_prefix, "SCHEMA", *schema_arguments(dimension, layout),
            )  # fmt: skip
        except redis.ResponseError as error:
            # Another producer created it between our check and our create: that is success.
            if "already exists" in str(error).lower():
                return
            refuse_vector_type(error, layout)
            raise

    def index_info(self) -> dict[str, Any] | None:
        """FT.INFO as a dict, or None when the index does not exist."""
        try:
            raw = _execute(self._client, "FT.INFO", self.index_name)
        except redis.ResponseError as error:
            if _unknown_index(error):
                return None
            raise
        return pairs_to_dict(raw)

    def index_dimension(self) -> int | None:
        info = self.index_info()
        if info is None:
            return None
        for attribute in info.get("attributes", []):
            described = pairs_to_dict(attribute)
            if described.get("identifier") == vector_identifier(self.layout.storage):
                return int(described["dim"])
        return None

    def write_documents(
        self, documents: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int] = frozenset()
    ) -> WriteResult:
        """Write each document unless a newer one is stored, in non-transactional pipelines.

        `absent` names the ids whose key was missing when last read (the consumer has just read the
        stored fingerprints): a JSON document for one of them is created with JSON.SET NX, which costs
        the server less than the newest-wins script; a key stored meanwhile refuses NX and its
        document goes through the script after all, so a wrong hint costs time, never a newer
        document. A document that cannot be encoded, or that Redis rejects on its own, is returned as
        a failure; a server-wide refusal (connection lost, failover, out of memory) raises
        UnavailableError for the whole call, which is safe to repeat.
        """
        failures: list[RowFailure] = []
        stale = 0
        for start in range(0, len(documents), self._write_batch_size):
            batch = documents[start : start + self._write_batch_size]
            with translate_errors(f"writing {len(batch)} documents", self._client):
                result = self._write_batch(batch, absent)
            failures += result.failures
            stale += result.stale_skipped
        return WriteResult(failures, stale)

    def _write_batch(
        self, batch: Sequence[tuple[int, dict[str, Any]]], absent: Collection[int]
    ) -> WriteResult:
        failures: list[RowFailure] = []
        writes: list[_Write] = []
        for drug_id, document in batch:
            try:
                writes.append(self._prepare(drug_id, document, drug_id in absent))
            except (TypeError, ValueError) as error:
                failures.append(RowFailure(drug_id, type(error).__name__, f"cannot encode: {error}"))
        replies = self._send(writes)
        for write, reply in zip(writes, replies, strict=True):
            if isinstance(reply, Exception):
                failures.append(RowFailure(write.drug_id, type(reply).__name__, str(reply)))
        return WriteResult(failures, sum(reply == STALE for reply in replies))

    def _prepare(self, drug_id: int, document: dict[str, Any], absent: bool = False) -> _Write:
        version = document.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise TypeError(f"version must be an integer, not {version!r}")
        decimal = "" if version is None else str(version)
        if self.layout.storage == "hash":
            return _Write(drug_id, self.key(drug_id), (decimal, *hash_arguments(document, self.layout)))
        # Only JSON has a create-only write: HSET has no NX for a whole hash.
        return _Write(drug_id, self.key(drug_id), (encode_json(document), decimal), create=absent)

    def _send(self, writes: Sequence[_Write]) -> list[Any]:
        """Each write's reply in the script's terms (1 written, STALE, or an error), in one pipeline;
        a create refused because the key exists, or a script the server lost, is sent again by script.
        Raises the first server-wide error."""
        replies = _pipelined(self._client, writes, self._script_sha)
        raise_server_wide(replies)
        # NX answers nil when the key exists; anything else but an error is a create (b"OK", or True
        # once a JSON response callback is registered on the client).
        pairs = zip(writes, replies, strict=True)
        created = [
            write.create and reply is not None and not isinstance(reply, Exception) for write, reply in pairs
        ]
        replies = [1 if done else reply for done, reply in zip(created, replies, strict=True)]
        again = [
            i for i, (write, reply) in enumerate(zip(writes, replies, strict=True))
            if (write.create and not created[i]) or isinstance(reply, redis_errors.NoScriptError)
        ]  # fmt: skip
        if again:
            resent = self._run_script([replace(writes[i], create=False) for i in again])
            for i, reply in zip(again, resent, strict=True):
                replies[i] = reply
        return replies

    def _run_script(self, writes: Sequence[_Write]) -> list[Any]:
        """Replies of the newest-wins script for each write; raises the first server-wide error."""
        replies = _pipelined(self._client, writes, self._script_sha)
        raise_server_wide(replies)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis_errors.NoScriptError)]
        if missing:
            # The server lost its script cache (a restart, a failover, SCRIPT FLUSH): load it for
            # the batches to come, and send these with the script's text.
            _execute(self._client, "SCRIPT", "LOAD", self._script)
            resent = _pipelined(self._client, [writes[i] for i in missing], self._script_sha, self._script)
            raise_server_wide(resent)
            for i, reply in zip(missing, resent, strict=True):
                replies[i] = reply
        return replies

    def clear(self) -> int:
        """Drop the index and unlink every document under the prefix; returns documents removed."""
        removed = 0
        with translate_errors("clearing the index and documents", self._client):
            if self.index_info() is not None:
                _execute(self._client, "FT.DROPINDEX", self.index_name)
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=f"{self.key_prefix}*", count=5000):
                batch.append(key)
                if len(batch) == 1000:
                    removed += int(self._client.unlink(*batch))
                    batch.clear()
            if batch:
                removed += int(self._client.unlink(*batch))
        return removed

    def fingerprints(self, page_size: int = 1000) -> dict[int, str]:
        """Every document's id and content fingerprint, read with SCAN and pages of reads."""
        found: dict[int, str] = {}
        keys: list[bytes] = []
        with translate_errors("reading fingerprints", self._client):
            for key in self._client.scan_iter(match=f"{self.key_prefix}*", count=5000):
                keys.append(key)
                if len(keys) == page_size:
                    found.update(self._fingerprint_page(keys))
                    keys = []
            found.update(self._fingerprint_page(keys))
        return found

    def stored_fingerprints(self, drug_ids: Sequence[int]) -> dict[int, str]:
        """One page of reads: the fingerprints of those documents that exist (a missing key is absent)."""
        if not drug_ids:
            return {}
        with translate_errors("reading fingerprints", self._client):
            page = self._fingerprint_page([self.key(drug_id).encode() for drug_id in drug_ids])
        return {drug_id: found for drug_id, found in page.items() if found}

    def _fingerprint_page(self, keys: list[bytes]) -> dict[int, str]:
        ours = [(key, drug_id) for key in keys if (drug_id := self.drug_id(key)) is not None]
        if not ours:
            return {}
        if self.layout.storage == "hash":
            values = self._hash_fingerprints([key for key, _ in ours])
            return {drug_id: value for (_, drug_id), value in zip(ours, values, strict=True)}
        values = _execute(self._client, "JSON.MGET", *(key for key, _ in ours), "$.fingerprint")
        page = {}
        for (_, drug_id), value in zip(ours, values, strict=True):
            fingerprints = json.loads(value) if value else []
            page[drug_id] = fingerprints[0] if fingerprints else ""
        return page

    def _hash_fingerprints(self, keys: list[bytes]) -> list[str]:
        """Each key's fingerprint in one script call (HASH has no multi-key read); '' for none, and
        for a key of another type under the prefix, as JSON.MGET answers for one."""
        values = _execute(self._client, "EVAL", HASH_FINGERPRINTS_SCRIPT, len(keys), *keys)
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    def drug_id(self, key: bytes | str) -> int | None:
        """The drug id a key under the prefix names, or None for a key drugsync never writes."""
        text = key.decode() if isinstance(key, bytes) else key
        suffix = text[len(self.key_prefix) :] if text.startswith(self.key_prefix) else ""
        if not _CANONICAL_ID.match(suffix):
            return None
        drug_id = int(suffix)
        return drug_id if BIGINT_MIN <= drug_id <= BIGINT_MAX else None

    def server_id(self) -> str:
        with translate_errors("identifying the server", self._client):
            return str(self._client.info("server").get("run_id", ""))

    def scan_ids(self, cursor: int, count: int) -> tuple[int, list[int]]:
        """One SCAN step over the prefix; SCAN returns every key present from start to end of a walk."""
        with translate_errors("scanning documents", self._client):
            next_cursor, keys = self._client.scan(cursor=cursor, match=f"{self.key_prefix}*", count=count)
        return int(next_cursor), [drug_id for key in keys if (drug_id := self.drug_id(key)) is not None]

    def delete_documents(self, drug_ids: Sequence[int]) -> int:
        """Unlink these drugs' documents; returns how many existed."""
        removed = 0
        with translate_errors(f"deleting {len(drug_ids)} documents", self._client):
            for start in range(0, len(drug_ids), 1000):
                keys = [self.key(i) for i in drug_ids[start : start + 1000]]
                removed += int(self._client.unlink(*keys))
        return removed

    def scratch(self, name: str) -> "RedisDocumentStore":
        """A store on the same server under its own prefix and index, for measuring; clear() it after."""
        return self.at(f"{name}:", name)

    def drop_index(self) -> bool:
        """Drop the index, keeping its documents (DD would delete them all in one blocking command)."""
        with translate_errors("dropping an index", self._client):
            info = self.index_info()
            if info is None or str(info.get("index_name")) != self.index_name:
                return False  # gone already, or the name is an alias: never drop what it points at
            _execute(self._client, "FT.DROPINDEX", self.index_name)
        return True

    def unlink_page(self, cursor: int, count: int) -> tuple[int, int]:
        """One SCAN step over the prefix, unlinking what it finds: (next cursor, keys removed)."""
        with translate_errors("removing a generation's documents", self._client):
            next_cursor, keys = self._client.scan(cursor=cursor, match=f"{self.key_prefix}*", count=count)
            removed = int(self._client.unlink(*keys)) if keys else 0
        return int(next_cursor), removed

    def wait_until_indexed(self, count: int, seconds: float = 60) -> None:
        """Block until the index holds `count` documents (indexing of JSON is asynchronous)."""
        deadline = time.monotonic() + seconds
        while self.indexed_documents()[0] < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def memory_per_document(self, sample: int = 100) -> tuple[float, float]:
        """(bytes per JSON document by MEMORY USAGE, bytes per document of index) on this server."""
        with translate_errors("measuring memory", self._client):
            keys = list(itertools.islice(self._client.scan_iter(match=f"{self.key_prefix}*"), sample))
            # SAMPLES 0: every field counted; the default samples 5 fields of a HASH and may miss the vector
            used = [int(self._client.memory_usage(key, samples=0) or 0) for key in keys]
            info = self.index_info() or {}
        documents = max(int(info.get("num_docs", 0)), 1)
        index_mb = float(info.get("vector_index_sz_mb", 0)) + float(info.get("total_index_memory_sz_mb", 0))
        return (sum(used) / max(len(used), 1), index_mb * 2**20 / documents)

    def memory_limit(self) -> tuple[int, str]:
        """maxmemory, or the server's RAM when no maxmemory is set, with which one it is."""
        with translate_errors("reading memory limits", self._client):
            maxmemory = int(self._client.config_get("maxmemory").get("maxmemory") or 0)
            if maxmemory:
                return maxmemory, "maxmemory"
            return int(self._client.info("memory").get("total_system_memory", 0)), "server RAM (no maxmemory)"

    def count_documents(self) -> int:
        """Documents under the prefix, counted by SCAN (the keyspace may hold other data)."""
        with translate_errors("counting documents", self._client):
            return sum(1 for _ in self._client.scan_iter(match=f"{self.key_prefix}*", count=5000))

    def indexed_documents(self) -> tuple[int, int]:
        """(documents in the index, indexing failures) from FT.INFO; (0, 0) without an index."""
        with translate_errors("reading index info", self._client):
            info = self.index_info()
        if info is None:
            return 0, 0
        return int(info.get("num_docs", 0)), int(info.get("hash_indexing_failures", 0))

    def search(self, vector: Vectors, k: int, index: str | None = None) -> list[SearchHit]:
        """The k nearest documents to `vector` by cosine distance, in this index or `index` (an alias).

        Through an alias, GenerationMoved says the alias now points at another generation than this
        store's: the vector has another dimension, or the hits lie under another prefix; through a
        generation's own index (a server without aliases), that the index was retired meanwhile.
        """
        blob = self.layout.vector_bytes(np.asarray(vector, dtype=np.float32))
        query = f"*=>[KNN {int(k)} @{VECTOR_FIELD} $vector{self._query_tuning()} AS distance]"
        try:
            with translate_errors("searching", self._client):
                raw = _execute(
                    self._client, "FT.SEARCH", index or self.index_name, query, "PARAMS", "2", "vector", blob,
                    "SORTBY", "distance", "RETURN", str(len(RETURN_FIELDS) + 1), *RETURN_FIELDS,
                    "distance", "LIMIT", "0", str(int(k)), "DIALECT", "2",
                )  # fmt: skip
        except redis.ResponseError as error:
            if index is not None and "expected size" in str(error):
                raise GenerationMoved(f"{index} now holds vectors of another dimension: {error}") from error
            if index is not None and _unknown_index(error):  # a server without aliases: its index retired
                raise GenerationMoved(f"{index} no longer exists (a retired generation): {error}") from error
            raise
        return self._parse_hits(raw, index)

    def _query_tuning(self) -> str:
        """EF_RUNTIME sent with every HNSW query: a changed setting applies at once, no rebuild.
        (FLAT takes no such attribute.)"""
        if self.layout.algorithm != "HNSW":
            return ""
        return f" EF_RUNTIME {int(self.layout.hnsw_ef_runtime)}"

    def _parse_hits(self, raw: Sequence[Any], alias: str | None = None) -> list[SearchHit]:
        """Hits named by their keys: RETURN gives `id` as the index's NUMERIC, a double that
        rounds ids beyond 2^53 (9223372036854775807 comes back as 9.22337203685e+18)."""
        hits = []
        for position in range(1, len(raw), 2):
            key = raw[position].decode() if isinstance(raw[position], bytes) else str(raw[position])
            if alias is not None and not key.startswith(self.key_prefix):
                raise GenerationMoved(f"{alias} now answers from another generation ({key})")
            drug_id = self.drug_id(key)
            if drug_id is None:
                continue  # a key drugsync never writes, matched by a foreign document under the prefix
            fields = {key: str(value) for key, value in pairs_to_dict(raw[position + 1]).items()}
            distance = float(fields.pop("distance"))
            fields["id"] = str(drug_id)
            hits.append(SearchHit(drug_id, 1.0 - distance, fields))
        return hits


def _unknown_index(error: redis.ResponseError) -> bool:
    """Whether Redis answered that the index does not exist (the wording differs between versions)."""
    message = str(error).lower()
    return "unknown index" in message or "no such index" in message


def _execute(target: Any, *args: Any) -> Any:
    """redis-py's execute_command is untyped; this is the one place that admits it."""
    return target.execute_command(*args)


execute = _execute


def refuse_vector_type(error: redis.ResponseError, layout: StorageLayout) -> None:
    """A server that does not know the vector type refuses FT.CREATE naming it (MemoryDB and
    valkey-search answer "Unknown argument `FLOAT16`"): a ConfigError that says what to set."""
    if layout.vector_type != "FLOAT32" and layout.vector_type.lower() in str(error).lower():
        raise ConfigError(
            f"this Redis server cannot index {layout.vector_type} vectors ({error}): MemoryDB and"
            " ElastiCache vector search take FLOAT32 only; set DRUGSYNC_VECTOR_TYPE=FLOAT32"
        ) from error


def _pipelined(client: redis.Redis, writes: Sequence[_Write], sha: str, text: str | None = None) -> list[Any]:
    """One pipeline of the writes, errors as values: each by the script (EVALSHA, or EVAL of its text
    when given), or as JSON.SET NX when it creates."""
    pipe = client.pipeline(transaction=False)
    for write in writes:
        if write.create:
            _execute(pipe, "JSON.SET", write.key, "$", write.arguments[0], "NX")
        elif text is None:
            _execute(pipe, "EVALSHA", sha, 1, write.key, *write.arguments)
        else:
            _execute(pipe, "EVAL", text, 1, write.key, *write.arguments)
    return list(pipe.execute(raise_on_error=False)) if writes else []
