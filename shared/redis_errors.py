"""How Redis failures are classed: the server refusing everyone (retry later) or one document
(fail that row), and whether the server may evict what drugsync wrote."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis import exceptions as redis_errors

from shared.errors import ConfigError, UnavailableError


def judge_eviction_policy(policy: str, allow_eviction: bool) -> str | None:
    """None when Redis never evicts our documents; a warning when it might; ConfigError when it will.

    allkeys-* evicts any key under memory pressure, documents of ranges already marked done included,
    and nothing would write them again. volatile-* evicts only keys that carry a TTL: drugsync sets
    none, so ElastiCache's default volatile-lru behaves as noeviction unless something else puts TTLs
    on keys under our prefix. https://redis.io/docs/latest/develop/reference/eviction/
    """
    if policy == "noeviction":
        return None
    if policy.startswith("allkeys-"):
        if not allow_eviction:
            raise ConfigError(
                f"Redis maxmemory-policy is {policy}: under memory pressure it evicts documents whose range"
                " is already done, and no run writes them again. Set maxmemory-policy to noeviction (or"
                " volatile-lru), or set DRUGSYNC_ALLOW_EVICTION=true to accept the loss"
            )
        return (
            f"Redis maxmemory-policy is {policy} and DRUGSYNC_ALLOW_EVICTION=true: documents may be"
            " evicted after their range is done; `drugsync verify` finds the missing ones"
        )
    if policy.startswith("volatile-"):
        return (
            f"Redis maxmemory-policy is {policy}: only keys with a TTL are evicted; drugsync sets none,"
            " but a TTL put on a document by anything else makes it evictable"
        )
    return f"Redis maxmemory-policy is {policy!r}, which drugsync does not know: documents may be evicted"


# Replies that say the server cannot serve anyone right now, whatever the key or document: a
# failover (READONLY, MASTERDOWN), memory (OOM), a cluster resharding (MOVED, ASK, TRYAGAIN,
# CLUSTERDOWN), a restart (LOADING), a slow script (BUSY), persistence or replica trouble
# (MISCONF, NOREPLICAS), a user's permissions (NOPERM, or "ACL failure in script" when the
# script may run but not a command inside it: no row is at fault; the range waits for the grant). https://redis.io/docs/latest/develop/reference/protocol-spec/#simple-errors
SERVER_WIDE_CODES = frozenset(
    {"READONLY", "OOM", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "BUSY", "MASTERDOWN", "MOVED", "ASK",
     "MISCONF", "NOREPLICAS", "NOPERM"}
)  # fmt: skip
# redis-py turns some codes into classes and strips the code from the message (keeping it in
# status_code since 8.x); BusyLoadingError is a ConnectionError, MasterDownError a ClusterDownError,
# MovedError an AskError.
SERVER_WIDE_CLASSES: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    redis_errors.AskError,
    redis_errors.NoPermissionError,
)


def error_code(error: Exception) -> str:
    """The reply's error code: redis-py's status_code when it mapped one, else the message's first word."""
    code = getattr(error, "status_code", None)
    return str(code) if code else str(error).split(" ", 1)[0]


# A command a script may not run answers "ERR ACL failure in script: ...": code ERR, like a
# document's own errors, so the text tells it apart.
_SCRIPT_PERMISSION = "ACL failure in script"


def is_server_wide(error: Exception) -> bool:
    """True when retrying later can succeed because the server, not this one document, refused."""
    return (
        isinstance(error, SERVER_WIDE_CLASSES)
        or error_code(error) in SERVER_WIDE_CODES
        or str(error).startswith(_SCRIPT_PERMISSION)
    )


@contextmanager
def translate_errors(action: str, client: redis.Redis) -> Iterator[None]:
    """Server-wide Redis errors become UnavailableError (retryable); errors about data pass through."""
    try:
        yield
    except redis.RedisError as error:
        if not is_server_wide(error):
            raise
        if error_code(error) == "READONLY":
            # After a failover the endpoint's DNS name points at the new primary, but pooled
            # connections still reach the old one, now a replica: reconnect (and re-resolve) next call.
            client.connection_pool.disconnect()
        raise UnavailableError(f"Redis failed while {action}: {type(error).__name__}: {error}") from error


def raise_server_wide(replies: Sequence[Any]) -> None:
    """One server-wide refusal fails the batch: it says nothing about the rows it happened to hit."""
    for reply in replies:
        if isinstance(reply, Exception) and is_server_wide(reply):
            raise reply
