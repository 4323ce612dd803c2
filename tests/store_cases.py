"""What a document store must do, shared by the fake's unit tests and the real Redis Stack's.

NEWEST_WINS: one stored document, then a write of the same drug; which one is left. ABSENT is a
document stored before versions existed (no `version` field at all).
The Redis windows make the real server refuse writes for a while, then restore it.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from console.local_stack import free_port
from shared.documents import build_document
from tests.fakes import make_drug

ABSENT = "absent"
T = datetime(2026, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # 2.5e17 us: doubles are 32 µs apart


@dataclass(frozen=True)
class Case:
    name: str
    stored: datetime | str | None
    incoming: datetime | None
    winner: str  # "stored" or "incoming"


NEWEST_WINS = [
    Case("a late older write is skipped", T + timedelta(hours=1), T, "stored"),
    Case("a newer write replaces the older", T, T + timedelta(hours=1), "incoming"),
    Case("an equal version rewrites", T, T, "incoming"),
    Case("one microsecond older is skipped", T, T - US, "stored"),
    Case("stored NULL: no order, written", None, T, "incoming"),
    Case("incoming NULL: no order, written", T, None, "incoming"),
    Case("both NULL: written", None, None, "incoming"),
    Case("stored before versions existed: written", ABSENT, T - timedelta(days=365), "incoming"),
    Case("year 9999, 1 µs older: skipped", LAST, LAST - US, "stored"),
    Case("year 9999, 1 µs newer: written", LAST - US, LAST, "incoming"),
    Case("before 1970, older: skipped", datetime(1950, 1, 1, tzinfo=UTC), datetime(1940, 1, 1, tzinfo=UTC), "stored"),
    Case("before 1970, newer: written", datetime(1940, 1, 1, tzinfo=UTC), datetime(1950, 1, 1, tzinfo=UTC), "incoming"),
    Case("just before 1970 vs the epoch: written", datetime(1970, 1, 1, tzinfo=UTC) - US,
         datetime(1970, 1, 1, tzinfo=UTC), "incoming"),
    Case("year 1 vs 1 µs later: written", datetime(1, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC) + US,
         "incoming"),
    Case("after 1970 vs before: skipped", datetime(1970, 1, 1, tzinfo=UTC) + US,
         datetime(1969, 12, 31, tzinfo=UTC), "stored"),
    Case("timestamp without zone, read as UTC: skipped", datetime(2026, 1, 1, 1), T, "stored"),
]  # fmt: skip


def stored_document(case: Case, build: Any) -> dict[str, Any]:
    """The document already stored for a case, built by `build(name, read_at)`."""
    document: dict[str, Any]
    if case.stored == ABSENT:
        document = build("stored", T)
        del document["version"]
    else:
        assert not isinstance(case.stored, str)
        document = build("stored", case.stored)
    return document


def play_newest_wins(
    store: Any,
    vector: Callable[[int], Any],
    stored_name: Callable[[int], str],
    late_absent: bool = False,
    between: Callable[[], object] = lambda: None,
) -> None:
    """Every NEWEST_WINS case against a real store: its stored document, then (after `between`) the
    incoming one, named absent if `late_absent` (a wrong hint); each case's winner is left, and the
    stale writes are counted. `stored_name(drug_id)` reads back the stored document's name."""

    def build(drug_id: int) -> Any:
        return lambda name, read_at: build_document(
            make_drug(drug_id, name=name, read_at=read_at), vector(drug_id), "e1"
        )

    cases = dict(enumerate(NEWEST_WINS, start=1))
    first = store.write_documents([(i, stored_document(case, build(i))) for i, case in cases.items()])
    assert first.failures == []
    between()

    incoming = [(i, build(i)("incoming", case.incoming)) for i, case in cases.items()]
    late = store.write_documents(incoming, set(cases) if late_absent else frozenset())

    assert late.failures == []
    left = {case.name: stored_name(i) for i, case in cases.items()}
    assert left == {case.name: case.winner for case in cases.values()}
    assert late.stale_skipped == sum(case.winner == "stored" for case in cases.values())


@contextmanager
def out_of_memory(client: redis.Redis) -> Iterator[None]:
    """Every write is refused with OOM: maxmemory far below what the server holds, no eviction."""
    saved = {
        name: str(next(iter(client.config_get(name).values()))) for name in ("maxmemory", "maxmemory-policy")
    }
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        yield
    finally:
        for name, value in saved.items():
            client.config_set(name, value)


@contextmanager
def read_only(client: redis.Redis) -> Iterator[None]:
    """Every write is refused with READONLY: the server follows a master that is not there.

    A replica keeps its data until it syncs with its master, and this one never reaches it.
    """
    client.replicaof("127.0.0.1", str(free_port()))
    try:
        yield
    finally:
        client.replicaof("NO", "ONE")


def refused(client: redis.Redis, code: str) -> int:
    """Error replies with this code the server has sent since it started (INFO errorstats)."""
    stats = client.info("errorstats").get(f"errorstat_{code}", {})
    return int(stats.get("count", 0)) if isinstance(stats, dict) else 0
