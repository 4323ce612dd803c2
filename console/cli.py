"""`drugsync`: the operator's console. Never deployed to Lambda."""

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from uuid import UUID

from pydantic import ValidationError

from console import local_stack
from console.capacity import SAMPLE_SIZE, make_plan, measure, render_plan
from console.dead_letters import dead_lettered_ids, group_by_cause, list_dead_letters, redrive, render_groups
from console.demo import render_search, run_demo, search
from console.deployed import STACK_VARIABLE, deployed_settings, describe_deployment, start_deployed_run
from console.event_source import EventSourceConfig, LocalEventSource
from console.invoker import CodeSource, invoke_producer
from console.seed import seed_drugs, synthetic_sample
from console.services import Services
from console.status import gather_quota, gather_runs, gather_status, render_runs, render_status
from console.verify import render_report, repair, verify
from console.watch import DEFAULT_INTERVAL, interval_seconds, watch_run
from producer.plan import range_size_that_fits, resume_run
from shared.describe import describe_error
from shared.errors import ConfigError, DrugSyncError
from shared.generations import RedisGenerations
from shared.models import MAX_ROWS_PER_MESSAGE, SyncRequest, SyncSummary
from shared.postgres import free_connections
from shared.redact import redact_text
from shared.redis_errors import judge_eviction_policy
from shared.settings import get_settings

Command = Callable[[argparse.Namespace], int]


_opened: list[Services] = []
# The deployed stack the running command works on (--stack / DRUGSYNC_STACK), set by main() so that
# every command's services() honours it without each passing it on.
_stack: str | None = None


def services() -> Services:
    """The deployed stack's settings with --stack; else the environment, falling back to the
    running local stack for what is unset (never with --stack: the stack's settings win)."""
    if _stack:
        settings = deployed_settings(describe_deployment(_stack), os.environ)
    else:
        local_stack.apply_stack_env()
        get_settings.cache_clear()
        settings = get_settings()
    _opened.append(Services(settings))
    return _opened[-1]


def cmd_local_up(args: argparse.Namespace) -> int:
    options = local_stack.QueueOptions(args.visibility_timeout, args.max_receive_count)
    state = local_stack.up(options)
    print(state.exports())
    print(f"# drugsync local stack: {', '.join(state.started) or 'nothing started'}", file=sys.stderr)
    return 0


def cmd_local_down(args: argparse.Namespace) -> int:
    stopped = local_stack.down()
    print("local stack stopped" if stopped else "no local stack was running", file=sys.stderr)
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    found = services()
    eligible = seed_drugs(found.conn, found.settings, args.drugs)
    print(f"seeded {args.drugs:,} drugs into {found.settings.table} ({eligible:,} eligible)")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    """A sync into a new generation, whatever the current one holds: readers move when it is verified."""
    args.mode = "rebuild"
    return cmd_sync(args)


def cmd_sync(args: argparse.Namespace) -> int:
    mode = "incremental" if args.incremental else getattr(args, "mode", "full")
    request = SyncRequest(
        range_size=args.range_size, max_drugs=args.max_drugs, mode=mode, supersede=args.supersede
    )
    if args.stack and args.code:
        raise ConfigError("--code runs a producer from a folder here, --stack the deployed one: choose one")
    if args.stack:
        # With --stack the deployed producer plans and enqueues, with the deployed settings.
        summary = start_deployed_run(args.stack, request)
    elif args.code is None:
        summary = services().producer.start(request)
    else:
        local_stack.apply_stack_env()  # the handler reads its settings from the environment it inherits
        result, init_ms = invoke_producer(args.code, request)
        if result.response is None:
            print(f"drugsync: the producer handler in {args.code} failed: {result.error}", file=sys.stderr)
            return 1
        print(f"producer handler from {args.code}: init {init_ms:.0f} ms (cold start)", file=sys.stderr)
        summary = SyncSummary.model_validate(result.response)
    print_summary(summary, args.json)
    if not args.json:
        # Naming the run: a watch started later follows this run, not whichever is latest by then.
        stack = f" --stack {args.stack}" if args.stack else ""
        print(f"follow it: drugsync status --watch --run {summary.run_id}{stack}")
    return 0


def print_summary(summary: SyncSummary, as_json: bool) -> None:
    if as_json:
        print(summary.model_dump_json(indent=2))
    elif summary.mode == "incremental":
        print(
            f"run {summary.run_id}: incremental, {summary.changed_ids or 0:,} changed ids"
            f" (from {summary.changes_source}) in {summary.messages_sent:,} messages"
            f" (plan {summary.plan_seconds}s, enqueue {summary.enqueue_seconds}s)"
        )
    else:
        print(
            f"run {summary.run_id}: {summary.eligible_drugs:,} drugs in {summary.ranges:,} ranges,"
            f" {summary.messages_sent:,} messages (plan {summary.plan_seconds}s,"
            f" enqueue {summary.enqueue_seconds}s); {summary.mode} into generation {summary.generation}"
        )
        for superseded in summary.superseded:
            print(f"superseded run {superseded}: its remaining messages are dropped")


def cmd_capture(args: argparse.Namespace) -> int:
    capture = services().capture
    if args.capture_command == "install":
        status = capture.install()
        print(
            f"change capture installed on {status.source_table} at {status.installed_at:%Y-%m-%d %H:%M:%S}:"
            " table drugsync_changes, function drugsync_record_change(), triggers drugsync_capture_rows"
            " and drugsync_capture_update.\nRun a full `drugsync sync` now: incremental runs build on a"
            " full run started after this moment."
        )
        return 0
    if args.capture_command == "remove":
        capture.remove()
        print(
            f"change capture removed from {capture.source_table} (triggers gone; drugsync_changes kept);"
            " incremental runs now use the updated_at watermark"
        )
        return 0
    status = capture.status()
    report = {
        "table": status.source_table,
        "installed": status.installed,
        "installed_at": status.installed_at.isoformat() if status.installed_at else None,
        "triggers": status.triggers,
        "pending_changes": status.pending,
        "unclaimed_changes": status.unclaimed,
        "problem": status.broken,
    }
    print(json.dumps(report, indent=2) if args.json else render_capture(report))
    return 0


def render_capture(report: dict[str, object]) -> str:
    if report["problem"]:
        return f"change capture: BROKEN: {report['problem']}"
    if not report["installed"]:
        return (
            f"change capture: not installed on {report['table']}; incremental runs use the updated_at"
            " watermark (`drugsync capture install` to capture)"
        )
    return (
        f"change capture: installed on {report['table']} since {report['installed_at']};"
        f" {report['pending_changes']} change(s) recorded,"
        f" {report['unclaimed_changes']} not yet claimed by a run"
    )


def cmd_work(args: argparse.Namespace) -> int:
    found = services()
    config = EventSourceConfig(
        queue_url=found.queue.queue_url,
        batch_size=args.batch_size,
        max_concurrency=args.max_concurrency,
        function_timeout=args.timeout,
        wait_seconds=args.wait,
        until_empty=args.until_empty,
        log_path=args.log_file,
        code=CodeSource() if args.code is None else CodeSource.artefact(args.code),
    )
    source = LocalEventSource(found.sqs_client(), config)
    try:
        stats = source.run()
    except KeyboardInterrupt:
        source.stop()
        stats = source.stats
    print(
        f"{stats.invocations} invocations: {stats.succeeded} records ok, {stats.failed} failed,"
        f" {stats.timeouts} timed out, {stats.errors} errors, {stats.cold_starts} cold starts"
        + (f" (init {stats.init_ms_median:.0f} ms median)" if stats.init_ms_median is not None else "")
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch and args.json:
        raise ConfigError("--watch redraws a view for a person, --json prints one report: choose one")
    if args.interval is not None and not args.watch:
        raise ConfigError("--interval is the refresh period of --watch: add --watch")
    found = services()
    queue = found.queue if found.settings.queue_url else None
    run_id = UUID(args.run) if args.run else None
    if args.watch:
        interval = args.interval or DEFAULT_INTERVAL
        return watch_run(
            found.ledger, found.catalog, found.read_current_store, queue, found.dead_letter, run_id, interval
        )
    report = gather_status(
        found.ledger, found.catalog, found.current_store, queue, found.dead_letter, run_id, found.generations
    )
    report = replace(report, quota=gather_quota(found.store.client, found.settings))
    print(json.dumps(report.to_json(), indent=2) if args.json else render_status(report))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    found = services()
    runs = gather_runs(found.ledger, found.queue if found.settings.queue_url else None, args.limit)
    print(json.dumps(runs, indent=2) if args.json else render_runs(runs))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    found = services()
    found.ledger.ensure_schema()
    run_id = UUID(args.run) if args.run else found.ledger.latest_run_id()
    if run_id is None:
        raise ConfigError("no run to resume: the ledger has none")
    sent = resume_run(run_id, ledger=found.ledger, queue=found.queue)
    if sent:
        print(f"run {run_id}: sent {sent} message(s) again for what is not done")
    else:
        print(f"run {run_id} is complete and announced: nothing to resume")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    found = services()
    if args.json:
        hits = search(found, args.text, args.k)
        print(json.dumps([{"id": h.drug_id, "score": h.score, **h.fields} for h in hits], indent=2))
    else:
        print(render_search(found, args.text, args.k))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    found = services()
    if found.dead_letter is None:
        raise ConfigError("no dead-letter queue: set DLQ_URL")
    groups = group_by_cause(list_dead_letters(found.sqs_client(), found.dead_letter.queue_url))
    print(json.dumps(groups, indent=2) if args.json else render_groups(groups))
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    found = services()
    if found.dead_letter is None:
        raise ConfigError("no dead-letter queue: set DLQ_URL")
    report = redrive(
        found.sqs_client(),
        found.dead_letter.queue_url,
        found.queue.queue_url,
        dry_run=args.dry_run,
        max_messages=args.max,
        rows_per_message=args.split,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif report.task_handle:
        print(f"started StartMessageMoveTask {report.task_handle}: SQS moves every message back")
    else:
        verb = "would move" if report.dry_run else "moved"
        print(f"{verb} {report.moved} message(s) ({report.method}): {'; '.join(report.ids) or '-'}")
        if report.kept:
            print(f"{report.kept} message(s) could not be sent and stay in the DLQ", file=sys.stderr)
        if report.possibly_duplicated:
            print(
                f"{len(report.possibly_duplicated)} message(s) were sent but SQS refused to delete them from"
                f" the DLQ: possibly duplicated, never lost ({', '.join(report.possibly_duplicated)})",
                file=sys.stderr,
            )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    found = services()
    report = verify(found.catalog, found.current_store, found.current_embedder.name)
    if args.repair and not report.clean and found.generations.read().current is None:
        raise ConfigError("nothing is synced yet, so nothing to repair: run `drugsync sync` first")
    if args.repair and not report.clean:
        waiting = (
            dead_lettered_ids(list_dead_letters(found.sqs_client(), found.dead_letter.queue_url))
            if found.dead_letter is not None
            else set()
        )
        report.repair = repair(
            report,
            found.current_store,
            found.ledger,
            found.queue,
            found.current_embedder.dimension,
            found.settings.range_size,
            waiting,
            source_table=found.catalog.table_name,
            generation=found.generations.read().current,
        )
    print(json.dumps(report.to_json(), indent=2) if args.json else render_report(report))
    return 0 if report.clean else 1


def cmd_plan(args: argparse.Namespace) -> int:
    found = services()
    settings = found.settings
    policy = found.store.eviction_policy()
    durability = judge_eviction_policy(policy, settings.allow_eviction)  # refuses allkeys-* up front
    sample = next(found.catalog.iter_eligible(page_size=SAMPLE_SIZE), None)
    drugs = sample.drugs if sample and sample.drugs else synthetic_sample(SAMPLE_SIZE)
    measured = measure(drugs, found.embedder, found.store)
    range_size = min(
        settings.range_size,
        range_size_that_fits(
            settings.consumer_timeout_seconds, settings.handoff_margin_seconds, settings.seconds_per_drug
        ),
    )
    plan = make_plan(
        args.drugs if args.drugs is not None else found.catalog.count_eligible(),
        range_size, args.max_concurrency, measured,
        embedder=found.embedder.name, dimension=found.embedder.dimension,
        consumer_memory_mb=args.memory_mb, consumer_timeout=settings.consumer_timeout_seconds,
        redis_limit=found.store.memory_limit(), postgres_free=free_connections(found.db),
        redis_eviction=(policy, durability), texts_per_request=found.embedder.texts_per_request,
        quota_rpm=settings.embedding_quota_rpm, chunk_size=settings.embed_batch_size,
    )  # fmt: skip
    aliases = describe_aliases(found.generations)
    print(json.dumps({**plan.to_json(), "aliases": aliases}, indent=2) if args.json else render_plan(plan))
    if not args.json:
        print(f"index alias: {aliases}")
    return 0


def describe_aliases(generations: RedisGenerations) -> str:
    """Whether readers switch with the alias, on this server: tried on the current generation's index."""
    live = generations.read().live
    if live is None:
        return "tried when the first generation is begun (FT.ALIASUPDATE on a scratch alias)"
    if generations.supports_aliases(live.index):
        return f"FT.ALIASUPDATE works: readers of {generations.alias} move to a rebuild at once"
    return (
        "this server has no FT.ALIASUPDATE: the registry's current is the switch; readers that follow"
        f" it (drugsync search) move at once, a reader of {generations.alias} by name finds no index"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    state = local_stack.up()
    print(f"local stack: {', '.join(state.started) or 'already running'}")
    counts = run_demo(services(), args.drugs, args.batch_size, args.max_concurrency)
    print("the stack keeps running: try `drugsync status`, `drugsync search`; stop it with"
          " `drugsync local down`")  # fmt: skip
    return 0 if counts.consistent else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drugsync", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    on_stack = _stack_option()

    local = commands.add_parser("local", help="start or stop the embedded stack")
    local_commands = local.add_subparsers(dest="local_command", required=True)
    up = local_commands.add_parser("up", help="start services and print their settings as exports")
    up.add_argument("--visibility-timeout", type=int, default=360, help="seconds (default 360)")
    up.add_argument("--max-receive-count", type=int, default=3, help="receives before the DLQ")
    up.set_defaults(handler=cmd_local_up)
    local_commands.add_parser("down", help="stop the embedded stack").set_defaults(handler=cmd_local_down)

    seed = commands.add_parser("seed", help="fill the drugs table with synthetic drugs")
    seed.add_argument("--drugs", type=_positive, default=20_000)
    seed.set_defaults(handler=cmd_seed)

    sync = commands.add_parser("sync", help="start a sync run (the producer)", parents=[on_stack])
    sync.add_argument("--range-size", type=_positive)
    sync.add_argument("--max-drugs", type=_positive)
    sync.add_argument("--json", action="store_true")
    sync.add_argument(
        "--supersede",
        action="store_true",
        help="take over from an active run instead of being refused (its remaining messages are dropped)",
    )
    sync.add_argument(
        "--incremental",
        action="store_true",
        help="sync only the drugs changed since the last complete run (change capture, else updated_at)",
    )
    sync.add_argument(
        "--code", type=_code_folder, help="invoke the producer handler from this unpacked artefact"
    )
    sync.set_defaults(handler=cmd_sync)

    capture = commands.add_parser(
        "capture", help="change capture in the source database, for incremental runs"
    )
    capture_commands = capture.add_subparsers(dest="capture_command", required=True)
    capture_commands.add_parser("install", help="create the change table and triggers (once; idempotent)")
    capture_commands.add_parser("remove", help="drop the triggers (idempotent); the change table stays")
    capture_status = capture_commands.add_parser(
        "status", help="installed or not, since when, pending changes"
    )
    capture_status.add_argument("--json", action="store_true")
    capture.set_defaults(handler=cmd_capture)
    rebuild = commands.add_parser(
        "rebuild",
        help="sync every drug into a new generation; readers move to it once it is complete and verified",
        parents=[on_stack],
    )
    rebuild.add_argument("--range-size", type=_positive)
    rebuild.add_argument("--json", action="store_true")
    rebuild.add_argument(
        "--supersede",
        action="store_true",
        help="take over from an active run instead of being refused (its remaining messages are dropped)",
    )
    rebuild.set_defaults(handler=cmd_rebuild, max_drugs=None, code=None, incremental=False)

    work = commands.add_parser("work", help="run consumers the way Lambda's SQS trigger does")
    work.add_argument("--batch-size", type=_positive, default=1, help="records per invocation")
    work.add_argument("--max-concurrency", type=_positive, default=2)
    work.add_argument("--timeout", type=float, default=60.0, help="function timeout in seconds")
    work.add_argument("--wait", type=int, default=1, help="long-poll seconds (0-20)")
    work.add_argument("--until-empty", action="store_true", help="stop when the queue is drained")
    work.add_argument("--log-file", help="append consumer logs here instead of stdout")
    work.add_argument(
        "--code", type=_code_folder, help="import the consumer from this unpacked artefact only"
    )
    work.set_defaults(handler=cmd_work)

    status = commands.add_parser(
        "status", help="progress of a run and the counts that must agree", parents=[on_stack]
    )
    status.add_argument("--run", type=_run_id, help="run id (default: the latest)")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="redraw queues, rate and ETA until the run ends")
    status.add_argument(
        "--interval",
        type=interval_seconds,
        help=f"seconds between --watch refreshes (default {DEFAULT_INTERVAL:g})",
    )
    status.set_defaults(handler=cmd_status)

    runs = commands.add_parser("runs", help="recent runs and their states", parents=[on_stack])
    runs.add_argument("--limit", type=_positive, default=10)
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=cmd_runs)

    resume = commands.add_parser(
        "resume", help="send again what a run has not done (stalled, not enqueued)", parents=[on_stack]
    )
    resume.add_argument("run", nargs="?", type=_run_id, help="run id (default: the latest)")
    resume.set_defaults(handler=cmd_resume)

    search = commands.add_parser("search", help="KNN search over the index", parents=[on_stack])
    search.add_argument("text")
    search.add_argument("-k", type=_positive, default=5)
    search.add_argument("--json", action="store_true")
    search.set_defaults(handler=cmd_search)

    plan = commands.add_parser(
        "plan", help="what a run will take and whether it fits, before it runs", parents=[on_stack]
    )
    plan.add_argument("--drugs", type=_positive, help="plan for this many drugs (default: the table's)")
    plan.add_argument("--max-concurrency", type=_positive, default=10, help="consumers at once")
    plan.add_argument("--memory-mb", type=_positive, default=1024, help="consumer memory (MB)")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(handler=cmd_plan)

    check = commands.add_parser(
        "verify", help="compare Redis with Postgres; exit 1 on drift", parents=[on_stack]
    )
    check.add_argument("--repair", action="store_true", help="delete extras, re-sync missing and stale")
    check.add_argument("--json", action="store_true")
    check.set_defaults(handler=cmd_verify)

    dlq = commands.add_parser("dlq", help="dead-lettered messages grouped by cause", parents=[on_stack])
    dlq.add_argument("--json", action="store_true")
    dlq.set_defaults(handler=cmd_dlq)

    redrive_parser = commands.add_parser(
        "redrive", help="move dead-lettered messages back to the work queue", parents=[on_stack]
    )
    redrive_parser.add_argument("--dry-run", action="store_true", help="list what would move")
    redrive_parser.add_argument("--max", type=_positive, help="move at most N messages")
    redrive_parser.add_argument(
        "--split",
        type=_rows_per_message,
        help=f"at most N (<= {MAX_ROWS_PER_MESSAGE}) ids per redriven rows message, splitting any rows"
        " message, too big ones included (moves through the mover, not SQS's move task)",
    )
    redrive_parser.add_argument("--json", action="store_true")
    redrive_parser.set_defaults(handler=cmd_redrive)

    demo = commands.add_parser("demo", help="start the stack, seed, sync, consume, summarise")
    demo.add_argument("--drugs", type=_positive, default=20_000)
    demo.add_argument("--batch-size", type=_positive, default=1)
    demo.add_argument("--max-concurrency", type=_positive, default=2)
    demo.set_defaults(handler=cmd_demo)
    return parser


def _code_folder(text: str) -> str:
    if not (Path(text) / "consumer" / "handler.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an unpacked artefact (no consumer/handler.py in it)"
        )
    return text


def _stack_option() -> argparse.ArgumentParser:
    """--stack NAME, shared by every command that talks to deployed resources."""
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument(
        "--stack",
        default=os.environ.get(STACK_VARIABLE) or None,
        help=f"a deployed CloudFormation stack: its outputs and consumer's settings (env {STACK_VARIABLE})",
    )
    return option


def _run_id(text: str) -> str:
    try:
        return str(UUID(text))
    except ValueError:
        message = f"{text!r} is not a run id (a UUID, as `drugsync runs` lists them)"
        raise argparse.ArgumentTypeError(message) from None


def _rows_per_message(text: str) -> int:
    value = _positive(text)
    if value > MAX_ROWS_PER_MESSAGE:
        raise argparse.ArgumentTypeError(f"{value} ids would make a rows message the consumer refuses"
                                         f" (at most {MAX_ROWS_PER_MESSAGE})")  # fmt: skip
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    global _stack
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    _stack = getattr(args, "stack", None)
    try:
        return handler(args)
    except (DrugSyncError, ValidationError) as error:
        print(f"drugsync: {type(error).__name__}: {describe_error(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `drugsync status | head`: the reader left; say nothing more (https://docs.python.org/3/library/signal.html#note-on-sigpipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        # An operator gets one line naming what failed; DRUGSYNC_DEBUG=1 shows where.
        if os.environ.get("DRUGSYNC_DEBUG"):
            raise
        print(f"drugsync: unexpected {type(error).__name__}: {redact_text(str(error))}"
              " (set DRUGSYNC_DEBUG=1 for the traceback)", file=sys.stderr)  # fmt: skip
        return 3
    finally:
        while _opened:
            _opened.pop().close()


if __name__ == "__main__":
    sys.exit(main())
