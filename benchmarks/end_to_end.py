"""Rows B and C: drugsync end to end (producer -> SQS -> local event source -> consumers -> Redis).

The consumers are child processes that read their settings from this process's environment, as
`drugsync work` does, so a row's settings (embedder, quota, index names) are set there for its run
and put back after.
"""

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from benchmarks.probes import ProcessWatch, ServerMeter, consumer_workers, run_queue_seconds, sampling
from benchmarks.table import Row
from console.event_source import EventSourceConfig, LocalEventSource, WorkStats
from console.services import Services
from shared.generations import RedisGenerations
from shared.models import SyncRequest
from shared.settings import Settings

CPU_SAMPLE_SECONDS = 0.25


@dataclass(frozen=True)
class EndToEnd:
    """One end-to-end run's shape: the row it fills, the consumers' settings and max concurrency."""

    key: str
    label: str
    consumers: int
    env: Mapping[str, str]
    setup: str = ""


def simulated_api(consumers: int, latency_ms: float, quota_rpm: int, in_flight: int = 8) -> EndToEnd:
    """Row B: the simulated API (one text per request, `in_flight` requests per consumer) under a quota."""
    env = {
        "DRUGSYNC_EMBEDDER": "simulated",
        "DRUGSYNC_SIMULATED_LATENCY_MS": f"{latency_ms:g}",
        "DRUGSYNC_SIMULATED_TEXTS_PER_REQUEST": "1",
        "DRUGSYNC_BEDROCK_CONCURRENCY": str(in_flight),
        "DRUGSYNC_EMBEDDING_QUOTA_RPM": str(quota_rpm),
    }
    label = f"drugsync end to end, {latency_ms:g} ms API, {consumers} consumers"
    setup = f"1 text/request, {in_flight} requests in flight per consumer, quota {quota_rpm:,} RPM"
    return EndToEnd("B", label, consumers, env, setup)


def hashing(consumers: int) -> EndToEnd:
    """Row C: the default local (hashing) embedder."""
    return EndToEnd("C", f"drugsync end to end, hashing embedder, {consumers} consumers", consumers,
                    {"DRUGSYNC_EMBEDDER": "hashing"})  # fmt: skip


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """These variables set for the block (children started in it inherit them), then put back."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def fresh_names() -> dict[str, str]:
    """An index and key prefix no earlier row used, as settings fields."""
    tag = f"bench{uuid.uuid4().hex[:6]}"
    return {"index_name": f"idx:{tag}", "key_prefix": f"{tag}:"}


def as_environment(fields: Mapping[str, str]) -> dict[str, str]:
    """Settings fields as the variables a child process reads them from."""
    return {f"DRUGSYNC_{name.upper()}": value for name, value in fields.items()}


@contextmanager
def fresh_run(env: Mapping[str, str]) -> Iterator[Services]:
    """Services for a run with these settings under a fresh index and prefix; every generation it made
    is removed after, so Redis memory does not carry over to the next row."""
    with environment({**env, **as_environment(fresh_names())}), Services(Settings()) as services:
        try:
            yield services
        finally:
            RedisGenerations(services.store).clear_all()


@dataclass(frozen=True)
class Timed:
    """One end-to-end run, measured."""

    seconds: float
    redis_cpu: float
    redis_waited: str  # the server's time waiting for a CPU, as a row's setup says it
    consumers_cpu: float  # the workers' CPU after their init, sampled (the last fraction of a second missed)
    consumers_waited: float  # the workers' time runnable but waiting for a CPU, sampled the same way
    stats: WorkStats
    run_id: UUID


def timed_run(
    services: Services, consumers: int, drugs: int, log: Path, also_sample: Callable[[], None] = lambda: None
) -> Timed:
    """A full sync, timed from the producer's call to the queue drained and the run complete (its
    generation verified and switched); the consumers' workers are started and warmed before the clock,
    and take the first ranges while the producer still sends the rest.

    `also_sample` is called with each CPU sample, while the workers are alive (they end with the run)."""
    config = EventSourceConfig(
        queue_url=services.queue.queue_url, batch_size=1, max_concurrency=consumers, until_empty=True,
        wait_seconds=0, log_path=str(log),
    )  # fmt: skip
    source = LocalEventSource(services.sqs_client(), config)
    consumers_cpu, consumers_waited = ProcessWatch(), ProcessWatch(run_queue_seconds)

    def sample() -> None:
        workers = consumer_workers()
        consumers_cpu.sample(workers)
        consumers_waited.sample(workers)
        also_sample()

    try:  # from the first worker started: a failure anywhere after still stops them all
        source.warm()  # here, inits share the 2 cores with Redis; on Lambda they run elsewhere
        server = ServerMeter(services.store.client)
        with sampling(sample, CPU_SAMPLE_SECONDS), ThreadPoolExecutor(max_workers=1) as producer:
            began = time.perf_counter()
            # The source polls while the producer sends, as an event source mapping does on AWS.
            started = producer.submit(services.producer.start, SyncRequest())
            stats = source.poll(producing=lambda: not started.done())
            seconds = time.perf_counter() - began
            summary = started.result()
    finally:
        source.close()  # after the clock: a Lambda function does not wait for its containers to stop
    cpu, waited = server.cpu(), server.waited()
    progress = services.ledger.progress(summary.run_id)
    if progress is None or progress.state != "complete":
        raise SystemExit(f"the run did not complete: {progress}")
    if progress.drugs_done != drugs:
        raise SystemExit(f"{progress.drugs_done:,} drugs synced, not {drugs:,}")
    return Timed(seconds, cpu, waited, consumers_cpu.seconds, consumers_waited.seconds, stats, summary.run_id)


def run_end_to_end(shape: EndToEnd, drugs: int, log: Path) -> Row:
    """Row B or C: sync the whole table end to end into a fresh index."""
    with fresh_run(shape.env) as services:
        timed = timed_run(services, shape.consumers, drugs, log)
    stats = timed.stats
    warm = (f"{stats.cold_starts} warm workers (median init {stats.init_ms_median or 0:,.0f} ms, not timed)"
            f" using {timed.consumers_cpu:,.1f} CPU s,"
            f" waiting {timed.consumers_waited:,.2f} s for a CPU")  # fmt: skip
    setup = ", ".join(part for part in (shape.setup, warm, timed.redis_waited) if part)
    return Row(shape.key, shape.label, drugs, timed.seconds, setup, timed.redis_cpu)
