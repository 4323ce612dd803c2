"""Differences between what Postgres says should be in Redis and what Redis holds."""

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Drift:
    """Ids missing from Redis, extra in Redis, or stale (their fingerprint differs)."""

    missing: list[int]
    extra: list[int]
    stale: list[int]

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.stale)


def compare_fingerprints(expected: Mapping[int, str], actual: Mapping[int, str]) -> Drift:
    """Compare by id and content fingerprint, never by counts alone."""
    return Drift(
        missing=sorted(expected.keys() - actual.keys()),
        extra=sorted(actual.keys() - expected.keys()),
        stale=sorted(i for i in expected.keys() & actual.keys() if expected[i] != actual[i]),
    )
