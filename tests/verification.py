"""Does Redis match Postgres? By ids and content fingerprints, and the index by its count."""

from dataclasses import dataclass

from console.services import Services
from shared.documents import fingerprint
from shared.drift import Drift, compare_fingerprints


@dataclass(frozen=True)
class Verdict:
    drift: Drift
    expected: int
    indexed: int
    index_failures: int

    @property
    def lost(self) -> int:
        """Drugs Postgres has that Redis lacks or holds out of date."""
        return len(self.drift.missing) + len(self.drift.stale)

    @property
    def exact(self) -> bool:
        return self.drift.clean and self.indexed == self.expected and self.index_failures == 0


def verify(services: Services) -> Verdict:
    name = services.embedder.name
    expected: dict[int, str] = {}
    for page in services.catalog.iter_eligible():
        expected.update((drug.id, fingerprint(drug, name)) for drug in page.drugs)
        expected.update((row.drug_id, "<broken row>") for row in page.broken)  # cannot be in Redis
    indexed, failures = services.store.indexed_documents()
    return Verdict(
        compare_fingerprints(expected, services.store.fingerprints()), len(expected), indexed, failures
    )
