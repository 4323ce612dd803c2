import bisect
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from console.verify import covering_ranges
from shared.drift import compare_fingerprints


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
