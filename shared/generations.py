"""Generations of the Redis copy behind one index alias, and the registry readers follow.

Generation N (N >= 1) lives under its own key prefix `{base}@N:` and index `{alias}@N`; readers
search the alias (settings.index_name), which FT.ALIASUPDATE moves atomically once a new generation
is complete and verified. The registry, a HASH `{alias}@generations` beside the documents, says
which generation is current and what embedded each, so a reader needs no Postgres to embed its
query as the documents it searches were. A deployment from before generations (a real index named
like the alias) is generation 0 until the first switch replaces it.
https://redis.io/docs/latest/commands/ft.aliasupdate/
"""

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import redis
from redis.client import Pipeline

from shared.documents import TEXT_TEMPLATE_VERSION
from shared.errors import ConfigError, GenerationInUse, SwitchRefused
from shared.index_schema import index_differences
from shared.layout import DEFAULT_LAYOUT, StorageLayout
from shared.models import Generation
from shared.ports import GenerationCounts
from shared.redis_errors import translate_errors
from shared.redis_store import RedisDocumentStore, execute

CURRENT = "current"
ALIASES = "aliases"
NEXT = "next"
LEGACY = 0
LEGACY_EMBEDDER = "unknown (from before generations)"
T = TypeVar("T")


def generation_prefix(base_prefix: str, number: int) -> str:
    """`drug:` -> `drug@3:`; generation 0 (before generations) keeps the base prefix."""
    return base_prefix if number == LEGACY else f"{base_prefix.rstrip(':')}@{number}:"


def generation_index(alias: str, number: int) -> str:
    return alias if number == LEGACY else f"{alias}@{number}"


def nesting(prefixes: list[str]) -> list[tuple[str, str]]:
    """Pairs (a, b) where b starts with a: a SCAN of a's keys would walk (and retire) b's too."""
    return [(a, b) for a in prefixes for b in prefixes if a != b and b.startswith(a)]


@dataclass(frozen=True)
class Registry:
    """The registry as read: the current generation's number and every generation recorded."""

    current: int | None
    generations: dict[int, Generation] = field(default_factory=dict)
    aliases: bool = True

    @property
    def live(self) -> Generation | None:
        return None if self.current is None else self.generations.get(self.current)

    def building(self) -> list[Generation]:
        return [g for n, g in sorted(self.generations.items()) if g.state == "building" and n != self.current]

    def retiring(self) -> list[Generation]:
        return [g for n, g in sorted(self.generations.items()) if g.state == "retiring" and n != self.current]


@dataclass(frozen=True)
class Choice:
    """Which generation a run writes: a number to continue, or None to begin a new one."""

    mode: str
    number: int | None
    retire: tuple[int, ...] = ()

    @property
    def new(self) -> bool:
        return self.number is None


def matches(generation: Generation, embedder: str, layout: StorageLayout = DEFAULT_LAYOUT) -> bool:
    """Whether documents of this generation are what this embedder, text template and layout
    (storage, vector type, algorithm) make."""
    return (
        generation.embedder == embedder
        and generation.template_version == TEXT_TEMPLATE_VERSION
        and generation.layout_identity == layout.identity
    )


def choose_generation(
    mode: str, registry: Registry, embedder: str, layout: StorageLayout = DEFAULT_LAYOUT
) -> Choice:
    """A full run continues a matching generation whose switch is still to come (a rebuild refused or
    cut short: finishing it is what was asked), else writes the current one if it matches the
    settings, else rebuilds; either way the unswitched ones it does not continue are retired. A
    rebuild always begins anew (older unswitched ones are retired); an incremental run writes the
    current generation."""
    live = registry.live
    building = registry.building()
    if mode == "incremental":
        if live is None:
            raise ConfigError("no current generation to update incrementally: run `drugsync sync` first")
        return Choice(mode, live.number)
    if mode == "full":
        resumable = [g for g in building if matches(g, embedder, layout)]
        if resumable:
            keep = resumable[-1].number
            return Choice("rebuild", keep, tuple(g.number for g in building if g.number != keep))
        if live is not None and matches(live, embedder, layout):  # what was built for other settings goes
            return Choice(mode, live.number, tuple(g.number for g in building))
    return Choice("rebuild", None, tuple(g.number for g in building))


def counts_explained(indexed: int, eligible: int, open_failures: int, explained: int = 0) -> bool:
    """Whether the index holds every eligible drug but those failing, give or take `explained`
    (changes known to have happened since the run read them)."""
    return abs(indexed - (eligible - open_failures)) <= explained


def switch_refusal(
    counts: GenerationCounts, eligible: int, open_failures: int, canary_k: int, explained: int = 0
) -> str | None:
    """Why readers must not be sent to this generation, or None when they may."""
    if counts.indexing_failures:
        return f"{counts.indexing_failures:,} documents failed to index"
    if counts.indexed != counts.documents:
        return f"the index holds {counts.indexed:,} of the {counts.documents:,} documents under its prefix"
    if not counts_explained(counts.indexed, eligible, open_failures, explained):
        return (
            f"the index holds {counts.indexed:,} documents but Postgres has {eligible:,} eligible"
            f" drugs and the run {open_failures:,} failing ({explained:,} changed since the run started)"
        )
    expected = min(canary_k, counts.indexed)
    if counts.canary_hits != expected:
        return f"a canary KNN query for {canary_k} got {counts.canary_hits} hits, not {expected}"
    return None


class RedisGenerations:
    """The registry HASH and the generations' indexes on the server of `base` (the settings' store)."""

    def __init__(self, base: RedisDocumentStore) -> None:
        self.base = base
        self.layout = base.layout  # what a generation begun now is made of
        self.alias = base.index_name
        self.key = f"{self.alias}@generations"
        self._client: redis.Redis = base.client

    def store(self, number: int, generation: Generation | None = None) -> RedisDocumentStore:
        """The store of generation `number` on the same client, in the layout the registry records for
        it (read now unless `generation` is given): a generation keeps its layout when settings change.
        Generation 0 (from before layouts) is JSON FLOAT32 HNSW; one the registry lacks, the settings'."""
        prefix = generation_prefix(self.base.key_prefix, number)
        if generation is None and number != LEGACY:
            generation = self.read().generations.get(number)
        if generation is not None:
            identity = generation.layout_identity
        else:
            identity = DEFAULT_LAYOUT.identity if number == LEGACY else self.layout.identity
        return self.base.at(prefix, generation_index(self.alias, number), self.layout.with_identity(identity))

    def read(self) -> Registry:
        with translate_errors("reading the generations", self._client):
            raw = {k.decode(): v.decode() for k, v in self._client.hgetall(self.key).items()}  # type: ignore[union-attr]
        generations = {int(k): Generation(**json.loads(v)) for k, v in raw.items() if k.isdigit()}
        current = int(raw[CURRENT]) if CURRENT in raw else None
        aliases = raw.get(ALIASES, "1") == "1"
        if current is None and LEGACY not in generations:
            legacy = self._legacy()
            if legacy is not None:
                generations[LEGACY] = legacy
                current = LEGACY
        return Registry(current, generations, aliases)

    def _legacy(self) -> Generation | None:
        """A real index named like the alias: the deployment from before generations, as generation 0.

        One drugsync did not build is refused: its switch would drop someone else's index.
        """
        info = self.base.index_info()
        if info is None or str(info.get("index_name")) != self.alias:
            return None
        dimension = self.store(LEGACY).index_dimension() or 0
        differences = index_differences(info, self.base.key_prefix, dimension)  # JSON FLOAT32 HNSW then
        if differences:
            raise ConfigError(
                f"index {self.alias} is not the one drugsync builds: {'; '.join(differences)}."
                f" Drop it with `FT.DROPINDEX {self.alias}` (its documents are kept) or choose"
                " another DRUGSYNC_INDEX_NAME"
            )
        return Generation(
            LEGACY, LEGACY_EMBEDDER, dimension, 0, self.base.key_prefix, self.alias, None, "live", ""
        )

    def supports_aliases(self, index: str) -> bool:
        """Whether the server moves aliases (MemoryDB does; ElastiCache for Valkey documents none):
        tried for real on a scratch alias of `index`, which is removed again."""
        probe = f"{self.alias}@probe"
        try:
            with translate_errors("trying FT.ALIASUPDATE", self._client):
                execute(self._client, "FT.ALIASUPDATE", probe, index)
                execute(self._client, "FT.ALIASDEL", probe)
        except redis.ResponseError as error:
            if "unknown command" in str(error).lower():
                return False
            raise
        return True

    def begin(self, embedder: str, dimension: int, run_id: str) -> Generation:
        """Record a new generation (state building) and create its index; readers do not see it."""
        registry = self.read()
        number = self._next_number(registry)
        prefix = generation_prefix(self.base.key_prefix, number)
        others = [g.prefix for g in registry.generations.values()] + [self.base.key_prefix]
        clashes = nesting([*dict.fromkeys([*others, prefix])])
        if clashes:
            outer, inner = clashes[0]
            raise ConfigError(
                f"key prefix {inner!r} starts with {outer!r}: retiring one generation would delete the"
                f" other's documents; end DRUGSYNC_KEY_PREFIX with ':' (it is {self.base.key_prefix!r})"
            )
        now = datetime.now(UTC).isoformat(timespec="seconds")
        generation = Generation(
            number, embedder, dimension, TEXT_TEMPLATE_VERSION, prefix, generation_index(self.alias, number),
            run_id, "building", now, *self.layout.identity,
        )  # fmt: skip
        with translate_errors("recording a generation", self._client):
            if not self._client.hsetnx(self.key, str(number), _encode(generation)):
                raise ConfigError(f"generation {number} was begun by another run at the same moment: retry")
        self.store(number, generation).ensure_index(dimension)
        # Asked at every new generation (two commands): a server upgrade or migration is noticed.
        with translate_errors("recording alias support", self._client):
            self._client.hset(self.key, ALIASES, "1" if self.supports_aliases(generation.index) else "0")
        return generation

    def _next_number(self, registry: Registry) -> int:
        """A number never used before, even by a generation retired and forgotten since: a late
        message of the run that wrote it must not find a new generation under its number."""
        with translate_errors("numbering a generation", self._client):
            number = int(self._client.hincrby(self.key, NEXT, 1))
            highest = max([0, *registry.generations])
            if number <= highest:
                self._client.hset(self.key, NEXT, str(highest + 1))
                number = highest + 1
        return number

    def adopt(self, number: int, run_id: str) -> None:
        """A run continues a generation begun by an earlier one: it is now the run that switches it."""
        generation = self.read().generations[number]
        self._put(replace(generation, run_id=run_id))

    def switch(self, number: int) -> Generation | None:
        """Send readers to generation `number` in one MULTI: the alias and the registry's current.

        Returns the generation it replaced (now retiring), if any. A legacy index that bears the
        alias's name is dropped (its documents kept) and the alias added in the same MULTI. Only a
        generation still building is switched to: SwitchRefused says when a later run retired it,
        even one marking it retiring between our read and our MULTI (WATCH makes EXEC fail then).
        """

        def attempt(pipe: Pipeline) -> Generation | None:
            registry = self.read()
            new = registry.generations.get(number)
            if new is None or new.state != "building":
                state = "forgotten" if new is None else new.state
                raise SwitchRefused(f"generation {number} is {state}, not building: a later run replaced it")
            old = registry.live
            pipe.multi()
            if registry.aliases:
                if old is not None and old.number == LEGACY:
                    execute(pipe, "FT.DROPINDEX", self.alias)
                    execute(pipe, "FT.ALIASADD", self.alias, new.index)
                else:
                    execute(pipe, "FT.ALIASUPDATE", self.alias, new.index)
            pipe.hset(self.key, CURRENT, str(number))
            pipe.hset(self.key, str(number), _encode(replace(new, state="live")))
            if old is not None:
                pipe.hset(self.key, str(old.number), _encode(replace(old, state="retiring")))
            return None if old is None else replace(old, state="retiring")

        return self._watching(f"switching to generation {number}", attempt)

    def mark_retiring(self, number: int) -> None:
        """Mark a generation retiring unless it is current (a switch to it may have landed since the
        caller read the registry): readers would be left on a generation its Retire then drops."""

        def attempt(pipe: Pipeline) -> None:
            registry = self.read()
            generation = registry.generations.get(number)
            if generation is None or number == registry.current:
                return
            pipe.multi()
            pipe.hset(self.key, str(number), _encode(replace(generation, state="retiring")))

        self._watching("marking a generation retiring", attempt)

    def _watching(self, action: str, attempt: Callable[[Pipeline], T]) -> T:
        """Run `attempt` (it reads the registry, then queues its writes after MULTI) under WATCH of the
        registry, again whenever the registry changed in between (EXEC then fails: nothing is written).
        https://redis.io/docs/latest/develop/interact/transactions/#optimistic-locking-using-check-and-set
        """
        with translate_errors(action, self._client), self._client.pipeline(transaction=True) as pipe:
            while True:
                pipe.watch(self.key)  # type: ignore[no-untyped-call]
                result = attempt(pipe)
                try:
                    pipe.execute()  # an empty MULTI when the attempt wrote nothing: only the WATCH checked
                except redis.WatchError:
                    continue
                return result

    def forget(self, number: int) -> None:
        """Remove a retired generation from the registry."""
        with translate_errors("forgetting a generation", self._client):
            self._client.hdel(self.key, str(number))

    def clear_all(self) -> int:
        """Every generation's index and documents, and the registry; returns documents removed."""
        registry = self.read()
        removed = self.base.clear()
        for number, generation in registry.generations.items():
            removed += self.store(number, generation).clear()
        with translate_errors("clearing the generations", self._client):
            if self.base.index_info() is not None:  # the alias: FT.INFO answers for its target
                with contextlib.suppress(redis.ResponseError):  # not an alias
                    execute(self._client, "FT.ALIASDEL", self.alias)
            self._client.delete(self.key)
        return removed

    def resolve_alias(self) -> str | None:
        """The index the alias points at now (FT.INFO on an alias names its target)."""
        with translate_errors("resolving the alias", self._client):
            info = self.base.index_info()
        return None if info is None else str(info.get("index_name"))

    def counts(self, number: int, canary_k: int, wait_seconds: float) -> GenerationCounts:
        """Documents under the prefix, the index's counts once they caught up (JSON is indexed
        asynchronously), and the hits of a KNN query for a fixed vector of the generation's dimension."""
        generation = self.read().generations[number]
        store = self.store(number, generation)
        documents = store.count_documents()
        deadline = time.monotonic() + wait_seconds
        indexed, failures = store.indexed_documents()
        while indexed + failures < documents and time.monotonic() < deadline:
            time.sleep(0.2)
            indexed, failures = store.indexed_documents()
        dimension = generation.dimension
        canary = np.ones(dimension, dtype=np.float32) / np.sqrt(dimension)
        hits = len(store.search(canary, canary_k)) if indexed else 0
        return GenerationCounts(documents, indexed, failures, hits)

    def drop_index(self, number: int) -> bool:
        """Drop a generation's index, its documents kept; never the current one's (GenerationInUse),
        checked under WATCH so a switch to it cannot land between the check and the drop."""
        store = self._keys_of(number)

        def attempt(pipe: Pipeline) -> bool:
            if self.read().current == number:
                raise GenerationInUse(f"generation {number} is current: readers use it, it is never retired")
            info = store.index_info()
            if info is None or str(info.get("index_name")) != store.index_name:
                return False  # gone already, or the name is an alias: never drop what it points at
            pipe.multi()
            execute(pipe, "FT.DROPINDEX", store.index_name)
            return True

        return self._watching(f"dropping generation {number}'s index", attempt)

    def unlink_page(self, number: int, cursor: int, count: int) -> tuple[int, int]:
        return self._keys_of(number).unlink_page(cursor, count)

    def _keys_of(self, number: int) -> RedisDocumentStore:
        """A generation's prefix and index name, for what needs no layout (dropping, unlinking): no
        registry read per page."""
        prefix = generation_prefix(self.base.key_prefix, number)
        return self.base.at(prefix, generation_index(self.alias, number))

    def server_id(self) -> str:
        return self.base.server_id()

    def _put(self, generation: Generation) -> None:
        with translate_errors("recording a generation", self._client):
            self._client.hset(self.key, str(generation.number), _encode(generation))


LAYOUT_FIELDS = ("storage", "vector_type", "algorithm")


def _encode(generation: Generation) -> str:
    """A JSON FLOAT32 HNSW generation is recorded as before layouts were settings: code of that time
    (a rollback, a consumer not yet updated) still reads the registry, whose Generation has no such fields."""
    fields = asdict(generation)
    if generation.layout_identity == DEFAULT_LAYOUT.identity:
        for name in LAYOUT_FIELDS:
            del fields[name]
    return json.dumps(fields)


def describe(registry: Registry) -> dict[str, Any]:
    """The generations as status shows them: current, building and retiring."""
    live = registry.live
    return {
        "current": None if live is None else asdict(live),
        "building": [asdict(g) for g in registry.building()],
        "retiring": [asdict(g) for g in registry.retiring()],
        "aliases": registry.aliases,
    }
