"""Does Redis match Postgres? The suite's view of `drugsync verify`, with a count of drugs lost."""

from dataclasses import dataclass

from console.services import Services
from console.verify import VerifyReport
from console.verify import verify as verify_stores
from shared.drift import Drift


@dataclass(frozen=True)
class Verdict:
    report: VerifyReport

    @property
    def drift(self) -> Drift:
        return self.report.drift

    @property
    def expected(self) -> int:
        return self.report.postgres_eligible

    @property
    def indexed(self) -> int:
        return self.report.index_documents

    @property
    def lost(self) -> int:
        """Drugs Postgres has that Redis lacks or holds out of date."""
        return len(self.drift.missing) + len(self.drift.stale)

    @property
    def exact(self) -> bool:
        return self.report.clean


def verify(services: Services) -> Verdict:
    return Verdict(verify_stores(services.catalog, services.store, services.embedder.name))
