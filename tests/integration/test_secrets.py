"""A run whose consumers find Postgres and Redis only through Secrets Manager, as deployed functions do."""

import uuid

import pytest

from console.seed import seed_drugs
from console.services import Services
from console.status import gather_counts
from shared.models import SyncRequest
from shared.settings import get_settings
from tests.conftest import Isolated, store_local_secrets
from tests.integration.test_pipeline import _consume

pytestmark = pytest.mark.integration


def test_a_run_syncs_through_the_secrets_alone(test_env: Isolated, stack, sqs, monkeypatch) -> None:
    # GIVEN the database and Redis named only by secrets (in the moto server the consumers reach too)
    database_arn, redis_arn = store_local_secrets(stack, f"t{uuid.uuid4().hex[:8]}")
    for name in ("DATABASE_URL", "DRUGSYNC_DATABASE_URL", "REDIS_URL", "DRUGSYNC_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRUGSYNC_DATABASE_SECRET_ARN", database_arn)
    monkeypatch.setenv("DRUGSYNC_REDIS_SECRET_ARN", redis_arn)
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.redis_url is None
    assert settings.database_url is None

    # WHEN a run is started and its messages consumed by Lambda-like child processes
    with Services(settings) as services:
        eligible = seed_drugs(services.conn, settings, 500)
        summary = services.producer.start(SyncRequest(range_size=100))
        source = _consume(sqs, settings.queue_url)

        # THEN every eligible drug is in the real Redis the secret names, and the run is complete
        counts = gather_counts(services.catalog, services.read_current_store())
        assert (counts.postgres_eligible, counts.redis_documents, counts.index_documents) == (eligible,) * 3
        progress = services.ledger.progress(summary.run_id)
        assert progress is not None
        assert progress.complete
        assert source.stats.failed == 0
        assert source.stats.succeeded == summary.ranges + 1  # and the run's sweep
