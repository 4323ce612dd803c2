"""A run under the shared embedding quota on the local stack: every request waited its turn."""

import itertools
from collections.abc import Iterator

import pytest

from console.event_source import EventSourceConfig, LocalEventSource
from console.local_stack import StackState
from console.seed import seed_drugs
from console.services import Services
from console.verify import verify
from shared.models import SyncRequest
from shared.ratelimit import MICROSECONDS, enable_admission_log, interval_us, read_admission_log
from shared.redis_store import connect_redis
from shared.wiring import quota_key
from tests.conftest import Isolated, isolate

pytestmark = pytest.mark.integration
QUOTA_RPM = 3_000  # 50 a second: the run below takes a few seconds


@pytest.fixture
def quota_env(stack: StackState, monkeypatch: pytest.MonkeyPatch) -> Iterator[Isolated]:
    yield from isolate(
        stack, monkeypatch, visibility_timeout=60, DRUGSYNC_EMBEDDER="simulated",
        DRUGSYNC_SIMULATED_LATENCY_MS="5", DRUGSYNC_EMBEDDING_QUOTA_RPM=str(QUOTA_RPM),
    )  # fmt: skip


def test_a_run_under_a_quota_spaces_every_request_and_verifies_clean(quota_env: Isolated, sqs) -> None:
    # GIVEN a simulated one-text-per-request API under a quota, and the quota's admission log on
    settings = quota_env.settings
    client = connect_redis(quota_env.env["REDIS_URL"])
    key = quota_key(settings)
    start = enable_admission_log(client, key, 100_000)
    with Services(settings) as services:
        eligible = seed_drugs(services.conn, settings, 160)
        # WHEN a run is consumed by three concurrent consumers
        services.producer.start(SyncRequest(range_size=40))
        config = EventSourceConfig(
            queue_url=settings.queue_url or "", max_concurrency=3, wait_seconds=0, until_empty=True
        )
        stats = LocalEventSource(sqs, config).run()
        report = verify(services.catalog, services.current_store, services.embedder.name)

    # THEN Postgres and Redis agree exactly
    assert stats.failed == 0
    assert (len(report.drift.missing), len(report.drift.extra), len(report.drift.stale)) == (0, 0, 0)
    assert report.clean
    # AND each drug's one request was admitted by the shared quota, no two closer than 60 s / quota
    slots, _ = read_admission_log(client, key, start)
    assert len(slots) == eligible
    gaps = [b - a for a, b in itertools.pairwise(sorted(slots))]
    assert min(gaps) >= interval_us(QUOTA_RPM) == MICROSECONDS * 60 // QUOTA_RPM
