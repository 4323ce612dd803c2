"""`make bench-full` (not in CI): the whole catalog end to end on the local stack, then the ceiling.

    .venv/bin/python -m benchmarks.full [--drugs 494000] [--consumers 4] [--ceiling-writers 2]
        [--redis-nice -20]

Starts its own embedded stack in a temporary folder (the Redis server at --redis-nice, as make bench
runs it) and seeds --drugs synthetic drugs, then:
  1. drugsync end to end (producer -> SQS -> local event source -> consumers -> Redis) with the
     default hashing embedder, timed from the producer's call to the run complete; `verify` after;
  2. the ceiling (row D of `make bench`) on the same documents: built range by range as a consumer
     builds them, while the clock is stopped, and written through drugsync's write path into a
     fresh index of the same settings, timed until written and indexed.
Prints wall times, drugs/s and their ratio, the peak resident memory (VmHWM) of each process (the
consumer workers, this process which runs the producer, redis-server, postgres, the SQS server),
and Redis used_memory and its peak. Takes about 11 minutes at full size on a quiet 2-core machine.
"""

import argparse
import os
from functools import partial
from pathlib import Path

import redis

from benchmarks import ceiling
from benchmarks.end_to_end import fresh_names, fresh_run, timed_run
from benchmarks.probes import PeakWatch, children, consumer_workers, own_peak_rss_kb, sampling
from benchmarks.stack import add_redis_nice_argument, embedded_stack, favour_redis
from console import local_stack
from console.seed import seed_drugs
from console.services import Services
from console.verify import verify
from shared.ports import RunProgress
from shared.settings import Settings
from shared.wiring import build_store

SAMPLE_SECONDS = 1.0
RANGES_PER_BATCH = 20  # the ceiling's documents are built this many ranges at a time (bounded memory)


def watch_processes(watch: PeakWatch, pids: dict[str, int]) -> None:
    """One sample of every process the run involves, by group."""
    watch.sample("consumer workers", consumer_workers())
    watch.sample("producer / CLI (this process)", [os.getpid()])
    watch.sample("redis-server", [pids.get("redis")])
    postmaster = pids.get("postgres")
    watch.sample("postgres (largest process)", [postmaster, *(children(postmaster) if postmaster else [])])
    watch.sample("SQS server (moto)", [pids.get("sqs")])


def redis_memory_line(client: redis.Redis, label: str) -> str:
    info = client.info("memory")
    return (
        f"redis {label}: used_memory {info['used_memory'] / 2**20:,.0f} MiB,"
        f" used_memory_peak {info['used_memory_peak'] / 2**20:,.0f} MiB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drugs", type=int, default=494_000)
    parser.add_argument(
        "--consumers", type=int, default=4, help="the event source's max concurrency (as make bench's row C)"
    )
    ceiling.add_writers_argument(parser)
    add_redis_nice_argument(parser)
    args = parser.parse_args(argv)
    if args.drugs < 1 or args.consumers < 1 or args.ceiling_writers < 1:
        parser.error("--drugs, --consumers and --ceiling-writers must be at least 1")
    with embedded_stack(local_stack.QueueOptions(visibility_timeout=600)) as (services, state, folder):
        priority = favour_redis(state.pids["redis"], args.redis_nice)
        eligible = seed_drugs(services.conn, services.settings, args.drugs)
        print(f"{args.drugs:,} drugs seeded ({eligible:,} eligible); hashing embedder, {args.consumers}"
              f" consumers at most; {priority}", flush=True)  # fmt: skip
        watch = PeakWatch()
        seconds, clean = end_to_end(args.consumers, eligible, state.pids, folder / "consumers.log", watch)
        watch.peaks_kb["producer / CLI (this process)"] = own_peak_rss_kb()  # before the ceiling's documents
        written = ceiling_on(services.settings, services, args.ceiling_writers)
    print(f"end to end / ceiling: {written.seconds / seconds:.2f} (target >= 0.9)")
    print("peak resident memory (VmHWM) during the end-to-end run:")
    for group, peak in watch.peaks_kb.items():
        print(f"  {group:<32} {peak / 1024:>8,.0f} MiB")
    if not clean:
        raise SystemExit("verify found drift after the end-to-end run (it must be 0/0/0)")


def end_to_end(
    consumers: int, eligible: int, pids: dict[str, int], log: Path, watch: PeakWatch
) -> tuple[float, bool]:
    """The full sync end to end while the processes are watched, then `verify`; (seconds, verify clean)."""
    sample = partial(watch_processes, watch, pids)
    with fresh_run({"DRUGSYNC_EMBEDDER": "hashing"}) as run, sampling(sample, SAMPLE_SECONDS):
        timed = timed_run(run, consumers, eligible, log, also_sample=sample)
        rate = eligible / timed.seconds
        print(f"end to end: {eligible:,} drugs in {timed.seconds:,.1f} s ({rate:,.0f}/s),"
              f" Redis CPU {timed.redis_cpu:,.1f} s, {timed.redis_waited}", flush=True)  # fmt: skip
        print(redis_memory_line(run.store.client, "after the end-to-end run"), flush=True)
        progress = run.ledger.progress(timed.run_id)
        if progress is not None:
            print(f"  the run's moments: {stages(progress)}", flush=True)
        report = verify(run.catalog, run.read_current_store(), run.current_embedder.name)
    drift = report.drift
    print(f"verify: missing {len(drift.missing)}, extra {len(drift.extra)}, stale {len(drift.stale)}"
          f" ({report.seconds:.1f} s)", flush=True)  # fmt: skip
    return timed.seconds, not (drift.missing or drift.extra or drift.stale)


def stages(progress: RunProgress) -> str:
    """When the run's recorded moments came, in seconds after its start: the last range enqueued (the
    consumers take the first ones meanwhile), the last range done, the sweep done, and the run's end
    (readers switched to its generation)."""
    moments = [
        ("all enqueued", progress.enqueued_at),
        ("last range done", progress.last_done_at),
        ("swept", progress.swept_at),
        ("finished", progress.finished_at),
    ]
    start = progress.started_at
    return ", ".join(f"{name} +{(at - start).total_seconds():,.1f} s" for name, at in moments if start and at)


def ceiling_on(settings: Settings, services: Services, writers: int = ceiling.WRITERS) -> ceiling.Written:
    """The ceiling on the same documents, built a few ranges at a time, into a fresh index by
    `writers` clients at once."""
    store = build_store(settings.model_copy(update=fresh_names()))
    store.ensure_index(settings.embedding_dim)
    try:
        batches = ceiling.document_batches(settings, services.catalog, RANGES_PER_BATCH)
        written = ceiling.write_timed(store, batches, settings.embed_batch_size, writers)
        print(redis_memory_line(store.client, "after the ceiling"), flush=True)
    finally:
        store.clear()
    per_document = written.used_bytes / written.documents / 1024
    print(f"ceiling ({writers} writers): {written.documents:,} documents in {written.seconds:,.1f} s"
          f" ({written.documents / written.seconds:,.0f}/s), Redis CPU {written.redis_cpu:,.1f} s,"
          f" {written.redis_waited}, {per_document:.2f} KB per document", flush=True)  # fmt: skip
    return written


if __name__ == "__main__":
    main()
