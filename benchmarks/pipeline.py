"""`make bench`: five ways of getting the same drugs into the same index, side by side in one run.

    .venv/bin/python -m benchmarks.pipeline [--drugs 20000] [--consumers 8] [--quota 60000] [--in-flight 16]
        [--latency-ms 70] [--a-drugs 300] [--hashing-consumers 4] [--range-size 500] [--repeats 3]
        [--ceiling-writers 2] [--redis-nice -20]

  A  the original design: one process, one drug at a time (read, one 70 ms API request, one JSON.SET)
  B  drugsync end to end at max concurrency --consumers, the same simulated API, under --quota RPM
  C  drugsync end to end with the default (hashing) embedder
  D  the Redis ceiling: C's documents pre-built, through drugsync's write path into a fresh index
  E  RedisVL's SearchIndex.load of the same documents into an index of the same schema
then the ratios B/A, C/D and D/E against issue 10's targets, Redis memory per document for each
storage layout, and recall@10 of the HNSW settings against exact search. C, D and E run --repeats
rounds in turns; each shows its median run, and C/D and D/E are the medians of each round's ratio.

Starts its own embedded stack in a temporary folder; every row writes a fresh index under a fresh
prefix, removed before the next row. The Redis server runs at --redis-nice, first in line for a CPU
as on a node of its own (benchmarks/stack.favour_redis); each row says how long it still waited for
one. Shared machines are noisy: compare runs on the same machine.
"""

import argparse
from pathlib import Path

from benchmarks import ceiling, end_to_end, original
from benchmarks.stack import add_redis_nice_argument, embedded_stack, favour_redis
from benchmarks.table import Memory, Rounds, Row, render
from console import local_stack
from console.seed import seed_drugs
from console.services import Services
from shared.settings import Settings
from shared.wiring import redis_url

RECALL_QUERIES = 200


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drugs", type=int, default=20_000, help="drugs seeded (about 97%% eligible)")
    parser.add_argument("--consumers", type=int, default=8, help="row B's max concurrency")
    parser.add_argument(
        "--quota",
        type=int,
        default=60_000,
        help="row B's embedding quota, requests/min (it binds: 8 x 16 in flight could send 109,714)",
    )
    parser.add_argument("--in-flight", type=int, default=16, help="row B's requests in flight per consumer")
    parser.add_argument("--latency-ms", type=float, default=70.0, help="the simulated API's latency")
    parser.add_argument("--a-drugs", type=int, default=300, help="drugs row A syncs (it is slow)")
    parser.add_argument(
        "--hashing-consumers",
        type=int,
        default=4,
        help="row C's max concurrency (4 keeps Redis busier than 2)",
    )
    parser.add_argument(
        "--range-size",
        type=int,
        default=500,
        help="drugs per range in rows B and C (fewer messages: the local SQS server's CPU is Redis's too)",
    )
    parser.add_argument("--recall-queries", type=int, default=RECALL_QUERIES)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of rows C, D and E (each shown by its median run)"
    )
    ceiling.add_writers_argument(parser)
    add_redis_nice_argument(parser)
    args = parser.parse_args(argv)
    for name in (
        "drugs",
        "consumers",
        "quota",
        "in_flight",
        "a_drugs",
        "hashing_consumers",
        "range_size",
        "repeats",
        "ceiling_writers",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.latency_ms < 0 or args.recall_queries < 0:
        parser.error("--latency-ms and --recall-queries cannot be negative")
    return args


def run_rows(
    services: Services, eligible: int, args: argparse.Namespace, folder: Path
) -> tuple[list[Row], list[Memory], float | None, Rounds]:
    """Every row, each printed as it is measured; then the memory per document of each layout and
    recall@10. Rows C, D and E, whose ratios compare runs seconds apart, run --repeats rounds in
    turns (a shared machine slows one round or another): each is shown by its median run, and their
    ratios are the medians of each round's (table.Rounds)."""
    rows: list[Row] = [original.run_original(services, args.a_drugs, args.latency_ms)]
    print(rows[-1].progress(), flush=True)
    with end_to_end.environment({"DRUGSYNC_RANGE_SIZE": str(args.range_size)}):
        api = end_to_end.simulated_api(args.consumers, args.latency_ms, args.quota, args.in_flight)
        rows.append(end_to_end.run_end_to_end(api, eligible, folder / "consumers-B.log"))
        print(rows[-1].progress(), flush=True)
        settings = Settings()
        documents = ceiling.build_documents(settings, services.catalog)
        rounds = Rounds()
        memory: list[Memory] = []
        recall = None
        for attempt in range(args.repeats):
            hashing = end_to_end.hashing(args.hashing_consumers)
            measured = {"C": end_to_end.run_end_to_end(hashing, eligible, folder / "consumers-C.log")}
            queries = args.recall_queries if attempt == 0 else 0
            measured["D"], used, found = ceiling.run_ceiling(
                settings, documents, ceiling.LAYOUTS[0], queries, args.ceiling_writers
            )
            memory, recall = (memory, recall) if attempt else ([used], found)
            measured["E"] = ceiling.run_redisvl(settings, documents, redis_url(settings))
            rounds.rows.append(measured)
            print(*(row.progress() for row in measured.values()), sep="\n", flush=True)
    for layout in ceiling.LAYOUTS[1:]:  # every layout written as row D was, so their rates compare
        memory.append(ceiling.run_ceiling(settings, documents, layout, 0, args.ceiling_writers)[1])
    return rows + [rounds.median_row(key) for key in "CDE"], memory, recall, rounds


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    with embedded_stack(local_stack.QueueOptions(visibility_timeout=600)) as (services, state, folder):
        priority = favour_redis(state.pids["redis"], args.redis_nice)
        eligible = seed_drugs(services.conn, services.settings, args.drugs)
        settings = services.settings
        print(
            f"{args.drugs:,} synthetic drugs seeded ({eligible:,} eligible); every row:"
            f" {settings.embedding_dim} dims, HNSW M {settings.hnsw_m}"
            f" EF_CONSTRUCTION {settings.hnsw_ef_construction}, COSINE, a fresh index;"
            f" ranges of {args.range_size} in rows B and C; {priority}\n",
            flush=True,
        )
        rows, memory, recall, rounds = run_rows(services, eligible, args, folder)
    print("\n" + render(rows, memory, recall, args.recall_queries, rounds))


if __name__ == "__main__":
    main()
