"""`drugsync demo`: the whole job on the embedded stack, with a live progress bar and a summary."""

import sys
import threading
import time
from datetime import UTC, datetime
from typing import TextIO
from uuid import UUID

from console.event_source import EventSourceConfig, LocalEventSource
from console.paths import state_dir
from console.seed import seed_drugs
from console.services import Services
from console.status import Counts, describe_run, gather_counts, render_run_line
from shared.embedders import build_embedder_for
from shared.errors import ConfigError, GenerationMoved
from shared.generations import LEGACY
from shared.models import SyncRequest
from shared.redis_store import SearchHit

DEMO_QUERY = "amoxicillin 500 mg capsule"


class ProgressPrinter(threading.Thread):
    """Redraws the run's progress line from the ledger until stopped."""

    def __init__(self, services: Services, run_id: UUID, out: TextIO, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self._ledger = services.ledger
        self._run_id = run_id
        self._out = out
        self._interval = interval
        self._stop_event = threading.Event()
        self._interactive = out.isatty()

    def run(self) -> None:
        last_printed = 0.0
        while not self._stop_event.wait(self._interval):
            # Without a terminal, print a line every few seconds instead of redrawing.
            if self._interactive or time.monotonic() - last_printed > 5:
                self.draw()
                last_printed = time.monotonic()

    def draw(self) -> None:
        progress = self._ledger.progress(self._run_id)
        if progress is None:
            return
        line = render_run_line(describe_run(progress, datetime.now(UTC)))
        self._out.write(f"\r{line}" if self._interactive else f"{line}\n")
        self._out.flush()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.draw()
        if self._interactive:
            self._out.write("\n")


def run_demo(
    services: Services, drugs: int, batch_size: int, max_concurrency: int, out: TextIO = sys.stdout
) -> Counts:
    """Seed, sync, consume until drained, then compare the three counts and search once."""
    settings = services.settings
    began = time.perf_counter()
    eligible = seed_drugs(services.conn, settings, drugs)
    out.write(f"seeded {drugs:,} drugs ({eligible:,} eligible) in {time.perf_counter() - began:.1f}s\n")
    # A new synthetic catalog replaces the old one, so its Redis copy starts from nothing too.
    removed = services.generations.clear_all()
    if removed:
        out.write(f"cleared {removed:,} documents of an earlier demo from Redis\n")

    # Catalog and Redis copy start anew, so a run an earlier demo left unfinished is over: take over
    # its claim (its leftover messages are then dropped) instead of refusing the demo.
    summary = services.producer.start(SyncRequest(supersede=True))
    for superseded in summary.superseded:
        out.write(f"superseded run {superseded}, left unfinished by an earlier demo\n")
    out.write(
        f"run {summary.run_id}: {summary.ranges} ranges of <= {summary.range_size} drugs enqueued"
        f" (plan {summary.plan_seconds}s, enqueue {summary.enqueue_seconds}s)\n"
    )
    logs = state_dir() / "consumer.log"
    config = EventSourceConfig(
        queue_url=services.queue.queue_url,
        batch_size=batch_size,
        max_concurrency=max_concurrency,
        until_empty=True,
        log_path=str(logs),
    )
    printer = ProgressPrinter(services, summary.run_id, out)
    printer.start()
    stats = LocalEventSource(services.sqs_client(), config).run()
    printer.stop()
    out.write(
        f"consumers: {stats.invocations} invocations, {stats.succeeded} messages ok"
        f" (ranges, continuations, the sweep), {stats.failed} failed,"
        f" {stats.timeouts} timeouts (logs: {logs})\n"
    )
    counts = gather_counts(services.catalog, services.current_store)
    out.write(render_counts(counts) + "\n")
    out.write(render_search(services, DEMO_QUERY, 5) + "\n")
    return counts


def render_counts(counts: Counts) -> str:
    verdict = "all equal" if counts.consistent else "MISMATCH"
    return (
        "summary:\n"
        f"  eligible rows in Postgres  {counts.postgres_eligible:>10,}\n"
        f"  documents in Redis         {counts.redis_documents:>10,}\n"
        f"  documents in the index     {counts.index_documents:>10,}"
        f"  (indexing failures {counts.index_failures})\n"
        f"  -> {verdict}"
    )


def search(services: Services, text: str, k: int) -> list[SearchHit]:
    """The k drugs nearest to `text` through the alias, embedded as the current generation's documents were.

    The registry names the generation (and its embedder) the alias points at; if the alias moved
    between that read and the search (another dimension, hits under another prefix, or without
    aliases the generation's own index retired since), read again once.
    """
    for attempt in (1, 2):
        registry = services.generations.read()
        live = registry.live
        if live is None:
            raise ConfigError("nothing is synced yet: run `drugsync sync` and `drugsync work` first")
        embedder = (
            services.embedder
            if live.number == LEGACY
            else build_embedder_for(services.settings, live.embedder, live.dimension)
        )
        store = services.generations.store(live.number, live)
        # Without aliases (a server lacking FT.ALIASUPDATE) the registry's current is the switch.
        index = services.generations.alias if registry.aliases else live.index
        try:
            return store.search(embedder.embed_query(text), k, index=index)
        except GenerationMoved:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def render_search(services: Services, text: str, k: int) -> str:
    hits = search(services, text, k)
    lines = [f'search "{text}" (top {k}):']
    for rank, hit in enumerate(hits, 1):
        fields = hit.fields
        lines.append(
            f"  {rank}. {hit.score:.3f}  #{hit.drug_id:<8} {fields.get('name', '')}"
            f" | {fields.get('manufacturer', '')} | NDC {fields.get('ndc', '')}"
        )
    return "\n".join(lines)
