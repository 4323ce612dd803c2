import bisect
import itertools
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console.dead_letters import DeadLetter, dead_lettered_ids
from console.verify import VerifyReport, covering_ranges, repair
from shared.drift import Drift, compare_fingerprints
from shared.models import RangeMessage, RowsMessage
from tests.fakes import FakeLedger, FakeQueue, FakeStore


def test_drift_is_by_id_and_fingerprint() -> None:
    drift = compare_fingerprints({1: "a", 2: "b", 3: "c"}, {2: "b", 3: "x", 4: "d"})
    assert (drift.missing, drift.extra, drift.stale) == ([1], [4], [3])
    assert not drift.clean
    assert compare_fingerprints({1: "a"}, {1: "a"}).clean


@pytest.mark.parametrize(
    ("dirty", "eligible", "size", "expected"),
    [
        ([5], list(range(1, 11)), 3, [(5, 5, 1)]),
        ([2, 3, 4], list(range(1, 11)), 3, [(2, 4, 3)]),
        ([2, 3, 4, 5], list(range(1, 11)), 3, [(2, 4, 3), (5, 5, 1)]),
        ([1, 10], list(range(1, 11)), 10, [(1, 10, 10)]),
        ([1, 100], [1, 50, 100], 2, [(1, 1, 1), (100, 100, 1)]),
        ([], list(range(1, 11)), 3, []),
    ],
)
def test_fewest_covering_ranges(dirty, eligible, size, expected) -> None:
    ranges = covering_ranges(dirty, eligible, size)
    assert [(r.first_id, r.last_id, r.drug_count) for r in ranges] == expected


@given(
    eligible=st.lists(st.integers(0, 10_000), min_size=1, max_size=300, unique=True).map(sorted),
    data=st.data(),
    size=st.integers(1, 50),
)
def test_covering_ranges_cover_every_dirty_id_within_the_size_bound(eligible, data, size) -> None:
    dirty = sorted(data.draw(st.lists(st.sampled_from(eligible), unique=True)))

    ranges = covering_ranges(dirty, eligible, size)

    for drug_id in dirty:
        assert sum(r.first_id <= drug_id <= r.last_id for r in ranges) == 1
    for r in ranges:
        assert r.drug_count == bisect.bisect_right(eligible, r.last_id) - bisect.bisect_left(
            eligible, r.first_id
        )
        assert 1 <= r.drug_count <= size
    # no two neighbouring ranges could have been one: greedy is minimal
    for left, right in itertools.pairwise(ranges):
        joined = bisect.bisect_right(eligible, right.first_id) - bisect.bisect_left(eligible, left.first_id)
        assert joined > size


def test_repair_leaves_drugs_already_failing_to_the_dlq_and_deletes_nothing_itself() -> None:
    # GIVEN drug 5 failed in an earlier run and waits in the DLQ; 3 and 8 are missing; 9 is extra
    ledger, queue, store = FakeLedger(), FakeQueue(), FakeStore()
    earlier = uuid.uuid4()
    in_dlq = [
        _letter(RowsMessage(run_id=earlier, ids=[5], error_class="RowError", error="ndc").model_dump_json()),
        _letter(RangeMessage(run_id=earlier, first_id=1, last_id=2, expected_count=1).model_dump_json()),
        _letter("{not json"),
    ]
    store.documents[9] = {"id": 9}
    report = VerifyReport(
        drift=Drift(missing=[3, 5, 8], extra=[9], stale=[]), eligible_ids=list(range(1, 9)),
        postgres_eligible=8, redis_documents=6, index_documents=6, index_failures=0, seconds=0.1,
    )  # fmt: skip

    repaired = repair(report, store, ledger, queue, 32, 2, dead_lettered_ids(in_dlq))

    synced = [RangeMessage.model_validate_json(body) for body in queue.bodies]
    assert [(m.first_id, m.last_id) for m in synced] == [(3, 3), (8, 8)]  # not 5
    assert (repaired["drugs_to_resync"], repaired["failing_in_dlq"], repaired["extras_to_remove"]) == (
        2,
        1,
        1,
    )
    assert 9 in store.documents  # the run's sweep removes it, after checking Postgres again


def _letter(body: str) -> DeadLetter:
    return DeadLetter("m", "r", body, "RowError", "reason", 1, 0.0)
