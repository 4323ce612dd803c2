"""`make bench` and `make bench-full` on a tiny catalog: every row runs and is measured, and each
leaves Redis as it found it (no speed is asserted: this machine is shared)."""

import re
from pathlib import Path

import pytest

from benchmarks import full, pipeline
from benchmarks.probes import PeakWatch
from console.local_stack import StackState
from console.seed import seed_drugs
from console.services import Services
from shared.redis_store import execute
from tests.conftest import Isolated

pytestmark = pytest.mark.integration


def _bench_keys(services: Services) -> tuple[list[bytes], list[bytes]]:
    """Indexes and keys under the names the benchmark gives its rows."""
    client = services.store.client
    indexes = [name for name in execute(client, "FT._LIST") if name.startswith(b"idx:bench")]
    return indexes, list(client.scan_iter(match="bench*", count=5000))


def test_every_row_of_make_bench_runs_on_a_tiny_catalog(test_env: Isolated, tmp_path: Path) -> None:
    # GIVEN 200 drugs in the test's own table
    args = pipeline.parse_arguments(
        ["--drugs", "200", "--a-drugs", "5", "--consumers", "2", "--hashing-consumers", "1",
         "--range-size", "50", "--repeats", "1", "--recall-queries", "20"]
    )  # fmt: skip
    with Services(test_env.settings) as services:
        eligible = seed_drugs(services.conn, services.settings, args.drugs)

        # WHEN every row runs, one after the other
        rows, memory, recall, rounds = pipeline.run_rows(services, eligible, args, tmp_path)

        # THEN rows A to E were each measured on their drugs, and none left an index or a key behind
        assert [(row.key, row.drugs) for row in rows] == [("A", 5)] + [(key, eligible) for key in "BCDE"]
        assert all(row.seconds > 0 and row.redis_cpu is not None for row in rows)
        # (each row from B on says how long the server, on this machine, waited for a CPU)
        assert all(re.search(r"Redis waited \d+\.\d\d s for a CPU", row.setup) for row in rows[1:])
        assert [sorted(found) for found in rounds.rows] == [["C", "D", "E"]]
        assert _bench_keys(services) == ([], [])
    # AND each layout's memory holds at least each document's vector (2 or 4 bytes a number), HASH with
    # packed bytes takes less than JSON's number arrays, and HNSW found its neighbours
    per_document = {entry.layout: entry.per_document for entry in memory}
    assert list(per_document) == ["JSON FLOAT32", "JSON FLOAT16", "HASH FLOAT32", "HASH FLOAT16"]
    dimension = test_env.settings.embedding_dim
    assert per_document["JSON FLOAT32"] > dimension * 4
    assert per_document["HASH FLOAT16"] > dimension * 2
    assert per_document["HASH FLOAT32"] < per_document["JSON FLOAT32"]
    assert per_document["HASH FLOAT16"] < per_document["HASH FLOAT32"]
    assert recall is not None
    assert 0.9 <= recall <= 1.0


def test_bench_full_syncs_verifies_and_measures_each_process(
    stack: StackState, test_env: Isolated, tmp_path: Path
) -> None:
    # GIVEN 200 drugs in the test's own table
    with Services(test_env.settings) as services:
        eligible = seed_drugs(services.conn, services.settings, 200)
        watch = PeakWatch()

        # WHEN the whole catalog is synced end to end while the stack's processes are watched, then
        # written as the ceiling
        seconds, clean = full.end_to_end(2, eligible, stack.pids, tmp_path / "consumers.log", watch)
        written = full.ceiling_on(test_env.settings, services)

        # THEN verify found nothing amiss, both were timed on every drug, and each process was measured
        assert clean
        assert seconds > 0
        assert (written.documents, written.seconds > 0) == (eligible, True)
        assert {"consumer workers", "producer / CLI (this process)", "redis-server",
                "postgres (largest process)"} <= set(watch.peaks_kb)  # fmt: skip
        assert all(peak > 0 for peak in watch.peaks_kb.values())
        assert _bench_keys(services) == ([], [])
