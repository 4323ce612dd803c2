from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import redis
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser

from shared.documents import build_document, build_embedding_text, document_version, fingerprint
from shared.errors import ConfigError, UnavailableError
from shared.redis_errors import is_server_wide, judge_eviction_policy
from shared.redis_store import RedisDocumentStore
from tests.fakes import FakeStore, make_drug, unit_vector
from tests.store_cases import NEWEST_WINS, Case, stored_document


def test_embedding_text_leads_with_identity_and_skips_empty_fields() -> None:
    drug = make_drug(1, brand_name=None, description=None)
    assert (
        build_embedding_text(drug)
        == "Amoxicillin 500 mg capsule. amoxicillin. 500 mg. capsule. oral. by Teva"
    )


def test_fingerprint_changes_with_content_and_embedder_only() -> None:
    base = make_drug(1)
    assert fingerprint(base, "e1") == fingerprint(make_drug(1), "e1")
    assert fingerprint(base, "e1") != fingerprint(make_drug(1, strength="250 mg"), "e1")
    assert fingerprint(base, "e1") != fingerprint(base, "e2")


@pytest.mark.parametrize(
    ("updated_at", "version"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC), 1_767_225_600_000_001),
        (datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), -1),
        (datetime(2026, 1, 1, 2, tzinfo=UTC) - timedelta(hours=2), 1_767_225_600_000_000),
        (datetime(2026, 1, 1), 1_767_225_600_000_000),  # without a zone: read as UTC
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 253_402_300_799_999_999),
        (datetime(1, 1, 1, tzinfo=UTC), -62_135_596_800_000_000),
        (None, None),
    ],
)
def test_a_document_version_is_updated_at_in_exact_microseconds(
    updated_at: datetime | None, version: int | None
) -> None:
    assert document_version(updated_at) == version


# Every maxmemory-policy Redis has: https://redis.io/docs/latest/develop/reference/eviction/
@pytest.mark.parametrize(
    ("policy", "refused", "warned"),
    [
        ("noeviction", False, False),
        ("volatile-lru", False, True),
        ("volatile-lfu", False, True),
        ("volatile-random", False, True),
        ("volatile-ttl", False, True),
        ("allkeys-lru", True, True),
        ("allkeys-lfu", True, True),
        ("allkeys-random", True, True),
        ("some-future-policy", False, True),
    ],
)
def test_an_eviction_policy_that_may_drop_documents_is_refused_or_warned_about(
    policy: str, refused: bool, warned: bool
) -> None:
    if refused:
        with pytest.raises(ConfigError, match="DRUGSYNC_ALLOW_EVICTION=true"):
            judge_eviction_policy(policy, allow_eviction=False)
    else:
        assert (judge_eviction_policy(policy, allow_eviction=False) is not None) is warned
    # Allowing eviction never refuses, and still says what it risks.
    assert (judge_eviction_policy(policy, allow_eviction=True) is not None) is warned


def test_a_drug_read_without_a_snapshot_time_gets_a_document_without_a_version() -> None:
    document = build_document(make_drug(1, updated_at=None, read_at=None), unit_vector(8), "e1")
    assert (document["updated_at"], document["version"]) == (None, None)


def test_the_version_is_the_snapshot_time_not_updated_at() -> None:
    read = datetime(2026, 3, 1, tzinfo=UTC)
    restored = make_drug(1, updated_at=datetime(2020, 1, 1, tzinfo=UTC), read_at=read)  # moved backwards
    assert build_document(restored, unit_vector(8), "e1")["version"] == document_version(read)


@pytest.mark.parametrize("case", NEWEST_WINS, ids=lambda case: case.name)
def test_the_fake_store_keeps_the_newest_version(case: Case) -> None:
    def build(name: str, read_at: datetime | None) -> dict[str, Any]:
        return build_document(make_drug(1, name=name, read_at=read_at), unit_vector(8), "e1")

    store = FakeStore()
    store.write_documents([(1, stored_document(case, build))])

    result = store.write_documents([(1, build("incoming", case.incoming))])

    assert store.documents[1]["name"] == case.winner
    assert result.stale_skipped == (case.winner == "stored")
    assert result.failures == []


class _Pool:
    def __init__(self) -> None:
        self.disconnects = 0

    def disconnect(self) -> None:
        self.disconnects += 1


class _Pipeline:
    def __init__(self, client: "_RefusingRedis") -> None:
        self._client = client
        self._queued = 0

    def execute_command(self, *args: Any) -> None:
        self._queued += 1

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        return [self._client.error] * self._queued


class _RefusingRedis:
    """A client whose server answers every command with one error reply, parsed as redis-py parses it."""

    def __init__(self, reply: str) -> None:
        self.error = _parsed(reply)
        self.connection_pool = _Pool()

    def pipeline(self, transaction: bool = True) -> _Pipeline:
        return _Pipeline(self)

    def execute_command(self, *args: Any) -> Any:
        raise self.error

    def unlink(self, *keys: Any) -> int:
        raise self.error

    def info(self, section: str) -> dict[str, Any]:
        return {"maxmemory_policy": "noeviction"}  # INFO still answers on a replica, loading or full


def _parsed(reply: str) -> redis.RedisError:
    """The exception the installed redis-py makes of this error reply."""
    error: redis.RedisError = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    return error


def _store(client: _RefusingRedis) -> RedisDocumentStore:
    return RedisDocumentStore(cast(redis.Redis, client), key_prefix="t:drug:", index_name="idx")


def _documents(count: int) -> list[tuple[int, dict[str, Any]]]:
    return [(i, build_document(make_drug(i), unit_vector(8), "e1")) for i in range(1, count + 1)]


SERVER_WIDE = [
    "READONLY You can't write against a read only replica.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "CLUSTERDOWN The cluster is down",
    "LOADING Redis is loading the dataset in memory",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
    "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    "NOREPLICAS Not enough good replicas to write.",
]
ABOUT_ONE_DOCUMENT = [
    "ERR expected value at line 1 column 1",
    "ERR Existing key has wrong Redis type",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
]


@pytest.mark.parametrize("reply", SERVER_WIDE, ids=lambda reply: reply.split()[0])
def test_a_server_wide_refusal_fails_the_write_as_retryable_not_the_rows(reply: str) -> None:
    client = _RefusingRedis(reply)

    with pytest.raises(UnavailableError, match="writing 3 documents") as raised:
        _store(client).write_documents(_documents(3))

    assert raised.value.retryable
    # only a failover (READONLY) sends the client back to DNS for the endpoint
    assert client.connection_pool.disconnects == (reply.startswith("READONLY"))


@pytest.mark.parametrize("reply", ABOUT_ONE_DOCUMENT, ids=lambda reply: reply.split()[0])
def test_an_error_about_one_document_is_that_row_s_failure(reply: str) -> None:
    result = _store(_RefusingRedis(reply)).write_documents(_documents(3))

    assert [failure.drug_id for failure in result.failures] == [1, 2, 3]
    assert {failure.error_class for failure in result.failures} == {type(_parsed(reply)).__name__}


@pytest.mark.parametrize("reply", SERVER_WIDE, ids=lambda reply: reply.split()[0])
def test_deleting_and_creating_the_index_translate_server_wide_refusals(reply: str) -> None:
    store = _store(_RefusingRedis(reply))

    with pytest.raises(UnavailableError, match="deleting 2 documents"):
        store.delete_documents([1, 2])
    with pytest.raises(UnavailableError, match="checking the index"):
        store.ensure_index(8)


def test_errors_about_data_still_pass_through_untranslated() -> None:
    with pytest.raises(redis.ResponseError, match="wrong kind of value"):
        _store(_RefusingRedis(ABOUT_ONE_DOCUMENT[2])).delete_documents([1])


@pytest.mark.parametrize(
    ("error", "server_wide"),
    [
        # a redis-py without status_code: the class alone says it
        (redis_errors.ReadOnlyError("You can't write against a read only replica."), True),
        (redis_errors.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (redis_errors.BusyLoadingError("Redis is loading the dataset in memory"), True),
        (redis_errors.MasterDownError("Link with MASTER is down"), True),
        # a code redis-py does not map: the message keeps it
        (redis.ResponseError("BUSY Redis is busy running a script."), True),
        # the script may run, a command inside it may not: the user's grant, not the document
        (
            redis.ResponseError(
                "ACL failure in script: User nojson has no permissions to run the 'json.set' command"
            ),
            True,
        ),
        (redis.ResponseError("ERR busy parsing your document"), False),
        (redis.ResponseError("recursion limit exceeded at line 1 column 128"), False),
    ],
)
def test_server_wide_errors_are_recognised_by_class_or_by_code(error: Exception, server_wide: bool) -> None:
    assert is_server_wide(error) is server_wide
