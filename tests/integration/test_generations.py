"""Generations on the real Redis Stack: the registry, the switch under search load, retirement."""

import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from console.demo import search
from console.services import Services
from producer.plan import open_generation
from shared.embedders.hashing import HashingEmbedder
from shared.errors import ConfigError, GenerationInUse, GenerationMoved, SwitchRefused
from shared.generations import Choice, RedisGenerations, Registry, generation_index
from shared.redis_store import RedisDocumentStore
from shared.wiring import build_store
from tests.conftest import Isolated
from tests.factories import as_texts, readme_reader
from tests.integration.test_redis import _drugs, write_drugs

pytestmark = pytest.mark.integration
K = 10
DOCUMENTS = len(_drugs(200))


def _filled(store: RedisDocumentStore, count: int = 200, dimension: int = 128) -> None:
    write_drugs(_drugs(count), HashingEmbedder(dimension, batch_size=256), store)
    store.wait_until_indexed(len(_drugs(count)), seconds=30)


def _searching(
    client_store: RedisDocumentStore, alias: str, stop: threading.Event, answers: list[object]
) -> None:
    """Search the alias until stopped; record each answer's hit count, or the error it raised."""
    vector = np.ones(128, dtype=np.float32) / np.sqrt(128)
    while not stop.is_set():
        try:
            answers.append(len(client_store.search(vector, K, index=alias)))
        except GenerationMoved:
            answers.append("moved")  # a reader re-reads the registry; never a failure
        except Exception as error:
            answers.append(error)


def _under_load(store: RedisDocumentStore, alias: str, action) -> list[object]:
    stop, answers = threading.Event(), []  # type: ignore[var-annotated]
    reader = RedisDocumentStore(build_store_client(store), store.key_prefix, store.index_name)
    thread = threading.Thread(target=_searching, args=(reader, alias, stop, answers))
    thread.start()
    try:
        while len(answers) < 50:
            pass
        action()
        target = len(answers) + 50
        while len(answers) < target:
            pass
    finally:
        stop.set()
        thread.join()
    return answers


def build_store_client(store: RedisDocumentStore):
    """A second connection, as another reader process would have."""
    import redis

    return redis.Redis(connection_pool=redis.ConnectionPool(**store.client.connection_pool.connection_kwargs))


def test_the_alias_moves_atomically_under_search_load_and_the_old_generation_is_retired(
    test_env: Isolated,
) -> None:
    # GIVEN generation 1 current and generation 2 built beside it
    gens = RedisGenerations(build_store(test_env.settings))
    first = gens.begin("hashing-v1-128", 128, "run-1")
    _filled(gens.store(1))
    gens.switch(first.number)
    second = gens.begin("hashing-v1-128", 128, "run-2")
    _filled(gens.store(2))

    # WHEN readers search the alias while it moves
    answers = _under_load(gens.store(1), gens.alias, lambda: gens.switch(second.number))

    # THEN each answer was full (or told the reader to re-read), and the registry agrees with the alias
    assert [a for a in answers if a not in (K, "moved")] == []
    assert answers[0] == K
    assert answers[-1] == "moved"
    registry = gens.read()
    assert (registry.current, registry.generations[1].state) == (2, "retiring")
    assert gens.resolve_alias() == second.index
    assert gens.supports_aliases(second.index)

    # AND retiring generation 1 drops its index (documents kept), then unlinks them page by page
    assert gens.drop_index(1)
    assert gens.store(1).index_info() is None
    assert gens.store(1).count_documents() == DOCUMENTS
    cursor, removed = gens.unlink_page(1, 0, 50)
    while cursor:
        cursor, more = gens.unlink_page(1, cursor, 50)
        removed += more
    gens.forget(1)
    assert (removed, gens.store(1).count_documents(), sorted(gens.read().generations)) == (DOCUMENTS, 0, [2])
    assert gens.store(2).count_documents() == DOCUMENTS
    # AND a number is never used twice, not even that of a generation retired and forgotten
    gens.forget(gens.begin("hashing-v1-128", 128, "run-3").number)
    assert gens.begin("hashing-v1-128", 128, "run-4").number == 4


def test_a_deployment_from_before_generations_is_generation_0_and_its_switch_never_fails_a_search(
    test_env: Isolated,
) -> None:
    # GIVEN the old layout: a real index named like the alias over the base prefix
    legacy = build_store(test_env.settings)
    legacy.ensure_index(128)
    _filled(legacy)
    gens = RedisGenerations(legacy)
    registry = gens.read()
    assert (registry.current, registry.generations[0].index) == (0, test_env.settings.index_name)
    new = gens.begin("hashing-v1-128", 128, "run-1")
    _filled(gens.store(new.number))

    # WHEN its index is dropped and the alias added in one MULTI while readers search the name
    answers = _under_load(legacy, gens.alias, lambda: gens.switch(new.number))

    # THEN no search failed or came back short, and the name now leads to generation 1
    assert [a for a in answers if a not in (K, "moved")] == []
    assert gens.resolve_alias() == new.index
    assert gens.read().current == 1
    assert legacy.count_documents() == DOCUMENTS  # its documents wait for the retire message

    # AND retiring generation 0 never drops what its name now leads to (the alias's target)
    assert gens.drop_index(0) is False
    assert gens.resolve_alias() == new.index


def test_a_key_prefix_whose_generations_would_nest_is_refused(test_env: Isolated) -> None:
    settings = test_env.settings.model_copy(update={"key_prefix": test_env.settings.key_prefix.rstrip(":")})
    gens = RedisGenerations(build_store(settings))
    with pytest.raises(ConfigError, match=r"starts with.*end DRUGSYNC_KEY_PREFIX with ':'"):
        gens.begin("hashing-v1-128", 128, "run-1")


def test_the_readme_reader_example_searches_the_current_generation_through_the_alias(
    test_env: Isolated,
) -> None:
    # GIVEN generation 1 current, and the README's reader with the hashing embedder as its embed()
    gens = RedisGenerations(build_store(test_env.settings))
    first = gens.begin("hashing-v1-128", 128, "run-1")
    _filled(gens.store(first.number))
    gens.switch(first.number)
    namespace = readme_reader()

    # WHEN it searches
    keys = namespace["search"](gens.store(1).client, "amoxicillin 500 mg capsule", 5, gens.alias)

    # THEN it answers from generation 1, as drugsync's own search does
    assert len(keys) == 5
    assert all(key.startswith(first.prefix) for key in keys)
    vector = HashingEmbedder(128, 16).embed_texts(["amoxicillin 500 mg capsule"])[0]
    expected = [gens.store(1).key(hit.drug_id) for hit in gens.store(1).search(vector, 5, index=gens.alias)]
    assert as_texts(gens.store(1), keys, _drugs(200)) == as_texts(gens.store(1), expected, _drugs(200))


def test_a_search_mid_rebuild_embeds_as_the_current_generation_not_as_the_settings(
    test_env: Isolated,
) -> None:
    # GIVEN generation 1 current at 128 dimensions, and settings already at 256 for a rebuild
    gens = RedisGenerations(build_store(test_env.settings))
    first = gens.begin("hashing-v1-128", 128, "run-1")
    _filled(gens.store(first.number))
    gens.switch(first.number)
    wider = test_env.settings.model_copy(update={"embedding_dim": 256})

    # WHEN drugsync's search runs with those settings
    with Services(wider) as services:
        hits = search(services, "amoxicillin 500 mg capsule", K)

    # THEN it embedded the query at 128 dimensions and answered from generation 1
    vector = HashingEmbedder(128, 16).embed_texts(["amoxicillin 500 mg capsule"])[0]
    assert len(hits) == K
    assert hits == gens.store(1).search(vector, K)


@pytest.mark.parametrize("new_dimension", [128, 256])
def test_a_search_whose_alias_moved_after_the_registry_was_read_reads_again(
    test_env: Isolated, new_dimension: int
) -> None:
    # GIVEN the registry read while generation 1 was current, then the alias moved to generation 2
    gens = RedisGenerations(build_store(test_env.settings))
    first = gens.begin("hashing-v1-128", 128, "run-1")
    _filled(gens.store(first.number))
    gens.switch(first.number)
    second = gens.begin(f"hashing-v1-{new_dimension}", new_dimension, "run-2")
    _filled(gens.store(second.number), dimension=new_dimension)
    with Services(test_env.settings) as services:
        before = services.generations.read()
        gens.switch(second.number)
        reads = iter([before])
        real_read = services.generations.read
        services.generations.read = lambda: next(reads, None) or real_read()  # type: ignore[method-assign]

        # WHEN drugsync's search embeds for generation 1 and meets generation 2 behind the alias
        hits = search(services, "amoxicillin 500 mg capsule", K)

    # THEN it read the registry again and answered from generation 2, with its dimension
    vector = HashingEmbedder(new_dimension, 16).embed_texts(["amoxicillin 500 mg capsule"])[0]
    assert hits == gens.store(second.number).search(vector, K)


def _one_change_after_the_first_read(gens: RedisGenerations, change: Callable[[], object]) -> None:
    """Make `change` (by another client) land right after gens' next registry read, once."""
    real_read, done = gens.read, list[bool]()

    def read() -> Registry:
        registry = real_read()
        if not done:
            done.append(True)
            change()
        return registry

    gens.read = read  # type: ignore[method-assign]


def test_a_generation_marked_retiring_is_never_switched_to_even_between_the_read_and_the_multi(
    test_env: Isolated,
) -> None:
    # GIVEN generation 1 current, generations 2 and 3 built beside it, and 2 already marked retiring
    gens = RedisGenerations(build_store(test_env.settings))
    other = RedisGenerations(build_store(test_env.settings))  # another process: the producer
    for run in ("run-1", "run-2", "run-3"):
        gens.begin("hashing-v1-128", 128, run)
    gens.switch(1)
    other.mark_retiring(2)

    # WHEN a switch to 2 is asked, and one to 3 while the producer marks 3 retiring after its read
    with pytest.raises(SwitchRefused, match="generation 2 is retiring"):
        gens.switch(2)
    _one_change_after_the_first_read(gens, lambda: other.mark_retiring(3))
    with pytest.raises(SwitchRefused, match="generation 3 is retiring"):
        gens.switch(3)

    # THEN readers stay on generation 1, alias and registry alike
    registry = other.read()
    assert (registry.current, gens.resolve_alias()) == (1, generation_index(gens.alias, 1))
    assert (registry.generations[2].state, registry.generations[3].state) == ("retiring", "retiring")


def test_the_current_generation_is_never_marked_retiring_nor_its_index_dropped_even_by_a_late_read(
    test_env: Isolated,
) -> None:
    # GIVEN generation 1 current and generation 2 building
    gens = RedisGenerations(build_store(test_env.settings))
    other = RedisGenerations(build_store(test_env.settings))  # another process: the consumer switching
    gens.switch(gens.begin("hashing-v1-128", 128, "run-1").number)
    gens.begin("hashing-v1-128", 128, "run-2")

    # WHEN the switch to 2 lands right after a retirement of 2 read the registry
    _one_change_after_the_first_read(gens, lambda: other.switch(2))
    with pytest.raises(GenerationInUse, match="generation 2 is current"):
        gens.drop_index(2)
    gens.mark_retiring(2)

    # THEN generation 2 keeps its index and stays live
    assert gens.store(2).index_info() is not None
    assert other.read().generations[2].state == "live"
    assert gens.drop_index(1) is True


def test_a_continued_generation_whose_index_was_never_created_gets_it(test_env: Isolated) -> None:
    # GIVEN generation 2 recorded as building but without its index (begin failed after recording it)
    gens = RedisGenerations(build_store(test_env.settings))
    gens.switch(gens.begin("hashing-v1-128", 128, "run-1").number)
    gens.begin("hashing-v1-128", 128, "run-2")
    gens.store(2).drop_index()
    assert gens.store(2).index_info() is None

    # WHEN a later run continues it
    number = open_generation(Choice("rebuild", 2), uuid.uuid4(), gens, "hashing-v1-128", 128)

    # THEN its index exists, of the generation's dimension, and the run now switches it
    assert (number, gens.store(2).index_dimension()) == (2, 128)
    assert gens.read().generations[2].state == "building"


class _RetiredAfterTheRegistryRead:
    """A reader's client: right after its first registry read, the switch and the Retire land."""

    def __init__(self, client: Any, retire: Callable[[], object]) -> None:
        self._client, self._retire = client, retire

    def hgetall(self, key: str) -> Any:
        registry = self._client.hgetall(key)
        retire, self._retire = self._retire, lambda: None
        retire()
        return registry

    def execute_command(self, *args: Any) -> Any:
        return self._client.execute_command(*args)


def _without_aliases(test_env: Isolated) -> RedisGenerations:
    """Generation 1 current and 2 built beside it, on a server taken as one without FT.ALIASUPDATE."""
    gens = RedisGenerations(build_store(test_env.settings))
    gens.begin("hashing-v1-128", 128, "run-1")
    gens.store(1).client.hset(gens.key, "aliases", "0")
    _filled(gens.store(1))
    gens.switch(1)
    gens.begin("hashing-v1-128", 128, "run-2")
    gens.store(1).client.hset(gens.key, "aliases", "0")
    _filled(gens.store(2))
    return gens


def _switch_and_retire(gens: RedisGenerations) -> None:
    gens.switch(2)
    gens.drop_index(1)


def test_without_aliases_a_search_whose_generation_was_retired_after_the_registry_read_reads_again(
    test_env: Isolated,
) -> None:
    # GIVEN a server without aliases: readers search the current generation's own index
    gens = _without_aliases(test_env)
    with Services(test_env.settings) as services:
        real_read, reads = services.generations.read, list[int | None]()

        def read() -> Registry:  # the switch and the Retire land right after the first read
            registry = real_read()
            if not reads:
                _switch_and_retire(gens)
            reads.append(registry.current)
            return registry

        services.generations.read = read  # type: ignore[method-assign]

        # WHEN drugsync's search meets "unknown index" for generation 1
        hits = search(services, "amoxicillin 500 mg capsule", K)

    # THEN it read the registry again and answered from generation 2
    vector = HashingEmbedder(128, 16).embed_texts(["amoxicillin 500 mg capsule"])[0]
    assert (reads, hits) == ([1, 2], gens.store(2).search(vector, K))


def test_without_aliases_the_readme_reader_reads_again_when_its_generation_was_retired(
    test_env: Isolated,
) -> None:
    # GIVEN the README's reader on a server without aliases, its first registry read just before
    # the switch to generation 2 and the Retire of generation 1
    gens = _without_aliases(test_env)
    namespace = readme_reader()
    client = _RetiredAfterTheRegistryRead(gens.store(1).client, lambda: _switch_and_retire(gens))

    # WHEN it searches
    keys = namespace["search"](client, "amoxicillin 500 mg capsule", 5, gens.alias)

    # THEN it answered from generation 2
    assert len(keys) == 5
    assert all(key.startswith(gens.read().generations[2].prefix) for key in keys)
    assert gens.store(1).index_info() is None
