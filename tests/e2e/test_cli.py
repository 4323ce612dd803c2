"""The CLI and the local stack as a user runs them: `drugsync demo`, then `status --json`."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
DRUGSYNC = [sys.executable, "-m", "console.cli"]
OUTSIDE = ("DATABASE_URL", "REDIS_URL", "QUEUE_URL", "DLQ_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA")


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A shell environment with its own state folder and no outside URLs; the stack is stopped after."""
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE and not k.startswith("DRUGSYNC_")}
    env["DRUGSYNC_STATE_DIR"] = str(tmp_path_factory.mktemp("drugsync-state"))
    yield env
    subprocess.run([*DRUGSYNC, "local", "down"], env=env, check=False, timeout=120)


def drugsync(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DRUGSYNC, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def own_catalog(user_env: dict[str, str], name: str, drugs: int) -> dict[str, str]:
    """The local stack up and a seeded table, key prefix and index no other test uses."""
    env = {**user_env, "DRUGSYNC_TABLE": f"drugs_{name}", "DRUGSYNC_KEY_PREFIX": f"{name}:",
           "DRUGSYNC_INDEX_NAME": f"idx:{name}"}  # fmt: skip
    assert drugsync(env, "local", "up").returncode == 0
    assert drugsync(env, "seed", "--drugs", str(drugs)).returncode == 0
    return env


def _summary_counts(output: str) -> tuple[int, int, int]:
    numbers = [
        int(re.search(rf"{label}\s+([\d,]+)", output).group(1).replace(",", ""))  # type: ignore[union-attr]
        for label in ("eligible rows in Postgres", "documents in Redis", "documents in the index")
    ]
    return numbers[0], numbers[1], numbers[2]


@pytest.fixture(scope="module")
def demo(user_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`drugsync demo` once per module: the stack up and the catalog synced, for any test run alone."""
    return drugsync(user_env, "demo", "--drugs", "2500", "--max-concurrency", "2")


def test_demo_ends_with_equal_counts_a_matching_search_and_status_agrees(
    user_env: dict[str, str], demo: subprocess.CompletedProcess[str]
) -> None:
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "-> all equal" in demo.stdout
    eligible, in_redis, in_index = _summary_counts(demo.stdout)
    assert eligible == in_redis == in_index > 2000
    top_hits = re.findall(r"^\s+\d\. [\d.]+\s+#\d+\s+(.*?) \|", demo.stdout, flags=re.MULTILINE)
    assert len(top_hits) == 5
    assert all(hit.startswith("Amoxicillin 500 mg capsule") for hit in top_hits), top_hits

    status = drugsync(user_env, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    counts = report["counts"]
    assert (counts["postgres_eligible"], counts["redis_documents"], counts["index_documents"]) == (
        eligible,
        in_redis,
        in_index,
    )
    assert report["run"]["state"] == "complete"
    assert report["run"]["drugs_done"] == eligible
    assert report["queue"] == {"visible": 0, "in_flight": 0, "delayed": 0}
    assert report["dead_letter"] == {"visible": 0, "in_flight": 0, "delayed": 0}


@pytest.mark.usefixtures("demo")
def test_verify_finds_exactly_the_drift_planted_and_repair_removes_it(user_env: dict[str, str]) -> None:
    import psycopg
    import redis

    clean = drugsync(user_env, "verify", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["clean"] is True

    state = json.loads((Path(user_env["DRUGSYNC_STATE_DIR"]) / "stack.json").read_text())["env"]
    with psycopg.connect(state["DATABASE_URL"], autocommit=True) as conn:
        deleted, changed = [
            r[0] for r in conn.execute("SELECT id FROM drugs WHERE eligible ORDER BY id LIMIT 2")
        ]
        conn.execute("DELETE FROM drugs WHERE id = %s", [deleted])
        conn.execute("UPDATE drugs SET strength = '750 mg' WHERE id = %s", [changed])
    stray = 987_654_321
    client = redis.Redis.from_url(state["REDIS_URL"])
    prefix = _generation(client, "idx:drugs")["prefix"]  # the generation readers use: drug@1:
    assert prefix == "drug@1:"
    client.execute_command(  # type: ignore[no-untyped-call]
        "JSON.SET", f"{prefix}{stray}", "$", json.dumps({"id": stray, "name": "stray", "fingerprint": "x"})
    )

    drift = drugsync(user_env, "verify", "--json")
    assert drift.returncode == 1
    found = json.loads(drift.stdout)
    assert (found["missing_ids"], found["extra_ids"], found["stale_ids"]) == (
        [],
        sorted([deleted, stray]),
        [changed],
    )

    repaired = drugsync(user_env, "verify", "--repair", "--json")
    assert repaired.returncode == 1  # it found drift; the repair is under way
    assert json.loads(repaired.stdout)["repair"]["extras_to_remove"] == 2
    assert json.loads(repaired.stdout)["repair"]["ranges"] == 1
    assert (
        drugsync(user_env, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull).returncode == 0
    )

    after = drugsync(user_env, "verify", "--json")
    assert after.returncode == 0, after.stdout
    assert (
        json.loads(after.stdout)["missing"],
        json.loads(after.stdout)["extra"],
        json.loads(after.stdout)["stale"],
    ) == (0, 0, 0)


@pytest.mark.usefixtures("demo")
def test_plan_prints_the_figures_for_the_table_and_for_494000_drugs(user_env: dict[str, str]) -> None:
    table = drugsync(user_env, "plan")
    assert table.returncode == 0, table.stderr
    for figure in (
        "ranges of <=",
        "wall time at max concurrency",
        "Redis memory:",
        "as json FLOAT32 HNSW (index included, the chosen layout)",
        "hash FLOAT32 HNSW",
        "hash FLOAT16 HNSW",
        "KB/document",
        "Postgres connections:",
        "Redis eviction: maxmemory-policy noeviction",
        "cost estimate (USD):",
        "price assumptions:",
        "index alias: FT.ALIASUPDATE works: readers of idx:drugs move to a rebuild at once",
        "embedding API: none (hashing-v1-384 embeds in the consumer)",
    ):
        assert figure in table.stdout
    big = json.loads(drugsync(user_env, "plan", "--drugs", "494000", "--json").stdout)
    assert big["drugs"] == 494_000
    assert big["ranges"] == 494
    assert big["redis_json_bytes"] > big["redis_hash_bytes"] > 0
    assert big["wall_seconds"] > 0
    assert set(big["costs_usd"]) == {"lambda", "sqs", "embedding"}
    assert (big["embedding_requests"], big["embedding_bound_seconds"]) == (0, None)  # a local embedder


def test_local_up_prints_exports_that_reach_every_service(user_env: dict[str, str], tmp_path: Path) -> None:
    up = drugsync(user_env, "local", "up")
    assert up.returncode == 0, up.stderr
    script = tmp_path / "check.sh"
    check = (
        "import os, boto3, psycopg, redis;"
        "psycopg.connect(os.environ['DATABASE_URL']).execute('select 1');"
        "redis.Redis.from_url(os.environ['REDIS_URL']).ping();"
        "print(boto3.client('sqs').get_queue_attributes(QueueUrl=os.environ['QUEUE_URL'],"
        " AttributeNames=['RedrivePolicy'])['Attributes']['RedrivePolicy'])"
    )
    script.write_text(
        f'eval "$(cat {shlex.quote(str(tmp_path / "exports"))})"\n'
        f"{shlex.quote(sys.executable)} -c {shlex.quote(check)}\n"
        'redis-cli -u "$REDIS_URL" ping\n'
    )
    (tmp_path / "exports").write_text(up.stdout)
    reached = subprocess.run(["bash", str(script)], env=user_env, capture_output=True, text=True, timeout=120)
    assert reached.returncode == 0, reached.stderr
    policy, pong = reached.stdout.strip().splitlines()
    assert int(json.loads(policy)["maxReceiveCount"]) == 3
    assert pong == "PONG"  # the stack's own redis-cli, put on PATH by the exports


@pytest.mark.usefixtures("demo")
def test_search_and_sync_from_the_cli(user_env: dict[str, str]) -> None:
    search = drugsync(user_env, "search", "lipitor 40 mg tablet", "-k", "3", "--json")
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)
    assert hits[0]["name"] == "Lipitor 40 mg tablet"

    sync = drugsync(user_env, "sync", "--max-drugs", "300", "--range-size", "100", "--json")
    assert sync.returncode == 0, sync.stderr
    assert json.loads(sync.stdout)["ranges"] == 3
    work = drugsync(user_env, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull)
    assert work.returncode == 0, work.stderr
    assert "4 records ok, 0 failed" in work.stdout  # 3 ranges, then the run's sweep


def _stack_database_url(user_env: dict[str, str]) -> str:
    state = json.loads((Path(user_env["DRUGSYNC_STATE_DIR"]) / "stack.json").read_text())
    return str(state["env"]["DATABASE_URL"])


@pytest.mark.usefixtures("demo")
def test_poison_rows_end_in_the_dlq_and_a_redrive_after_the_fix_completes_the_run(
    user_env: dict[str, str],
) -> None:
    import psycopg

    with psycopg.connect(_stack_database_url(user_env), autocommit=True) as conn:
        poison = [
            r[0] for r in conn.execute("SELECT id FROM drugs WHERE eligible ORDER BY id LIMIT 3 OFFSET 50")
        ]
        conn.execute("UPDATE drugs SET ndc = '' WHERE id = ANY(%s)", [poison])
        assert drugsync(user_env, "sync", "--json").returncode == 0
        assert (
            drugsync(user_env, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull).returncode
            == 0
        )

        status = json.loads(drugsync(user_env, "status", "--json").stdout)
        assert status["run"]["state"] == "complete_with_failures"
        assert sorted(f["drug_id"] for f in status["run"]["failures"]) == sorted(poison)
        dlq = json.loads(drugsync(user_env, "dlq", "--json").stdout)
        assert sorted(int(i) for group in dlq for ids in group["ids"] for i in ids.split(",")) == sorted(
            poison
        )
        assert {group["error_class"] for group in dlq} == {"RowError"}

        conn.execute("UPDATE drugs SET ndc = 'fixed-' || id WHERE id = ANY(%s)", [poison])

    redriven = drugsync(user_env, "redrive")
    assert redriven.returncode == 0, redriven.stderr
    assert "moved 3 message(s) (receive-send-delete)" in redriven.stdout  # moto lacks the native API
    assert (
        drugsync(user_env, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull).returncode == 0
    )
    after = json.loads(drugsync(user_env, "status", "--json").stdout)
    assert after["run"]["state"] == "complete"
    assert after["counts"]["consistent"] is True
    assert after["dead_letter"] == {"visible": 0, "in_flight": 0, "delayed": 0}


EXTREME_IDS = [-5, 0, 7, 3_000_000_000, 2**63 - 1]


def test_any_bigint_ids_then_deletions_and_ineligible_rows_sync_to_complete_with_no_drift(
    user_env: dict[str, str],
) -> None:
    import psycopg

    # GIVEN its own table: the seeded catalog plus ids far apart, negative, zero and the largest bigint
    env = own_catalog(user_env, "wide", 400)
    with psycopg.connect(_stack_database_url(user_env), autocommit=True) as conn:
        for drug_id in EXTREME_IDS:
            conn.execute(
                "INSERT INTO drugs_wide (id, ndc, name, description) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description",
                [drug_id, f"ndc-{drug_id}", f"Édge drug {drug_id} 10 mg tablet", "Ünïcode ✓ 药物"],
            )

    first = sync_and_verify(env)
    assert first["postgres_eligible"] > 390

    # WHEN rows are deleted and others made ineligible, and a full sync runs again
    with psycopg.connect(_stack_database_url(user_env), autocommit=True) as conn:
        conn.execute("DELETE FROM drugs_wide WHERE id IN (-5, 3000000000) OR id BETWEEN 100 AND 120")
        conn.execute("UPDATE drugs_wide SET eligible = false WHERE id IN (0, 9223372036854775807) OR id < 40")
    second = sync_and_verify(env)

    # THEN the run is complete and Redis holds exactly what qualifies
    assert second["postgres_eligible"] < first["postgres_eligible"]
    status = json.loads(drugsync(env, "status", "--json").stdout)
    assert status["run"]["state"] == "complete"
    assert status["run"]["documents_removed"] == first["postgres_eligible"] - second["postgres_eligible"]
    runs = drugsync(env, "runs")
    assert runs.returncode == 0, runs.stderr
    assert runs.stdout.count("complete") >= 2


def sync_and_verify(env: dict[str, str]) -> dict[str, int]:
    """`sync`, `work --until-empty`, then `verify`: it must report 0 missing, 0 extra, 0 stale."""
    sync = drugsync(env, "sync", "--range-size", "50")
    assert sync.returncode == 0, sync.stdout + sync.stderr
    assert "Traceback" not in sync.stderr
    assert drugsync(env, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull).returncode == 0
    verified = drugsync(env, "verify", "--json")
    report = json.loads(verified.stdout)
    assert (report["missing"], report["extra"], report["stale"]) == (0, 0, 0), report
    assert verified.returncode == 0, report
    assert json.loads(drugsync(env, "status", "--json").stdout)["run"]["state"] == "complete"
    return dict(report)


def test_status_watch_follows_a_run_while_consumers_work_and_ends_when_it_completes(
    user_env: dict[str, str],
) -> None:
    # GIVEN a run of 10 ranges enqueued on its own table, nobody consuming yet
    env = own_catalog(user_env, "watch", 1000)
    sync = drugsync(env, "sync", "--range-size", "100", "--json")
    assert sync.returncode == 0, sync.stderr
    run_id = json.loads(sync.stdout)["run_id"]

    # WHEN the watch runs, and consumers start once it has drawn two frames
    with subprocess.Popen(
        [*DRUGSYNC, "status", "--watch", "--interval", "0.5", "--run", run_id],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as watcher:  # fmt: skip
        reader = LineReader(watcher)
        try:
            assert reader.wait_for("\n", seconds=60), "the watch drew no two frames apart"
            work = drugsync(env, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull)
            watcher.wait(timeout=120)
        finally:
            watcher.kill()  # nothing to do when it ended by itself
        output, errors = reader.text(), watcher.stderr.read() if watcher.stderr else ""

    # THEN it ends by itself with exit 0, having drawn frames from a full queue to a complete run
    assert work.returncode == 0, work.stderr
    assert watcher.returncode == 0, output + errors
    frames = output.strip().split("\n\n")
    assert len(frames) >= 3
    assert "\x1b[" not in output  # no terminal escapes in a pipe
    assert f"run {run_id}  running" in frames[0]
    assert re.search(r"queue [1-9]\d* visible", frames[0]), frames[0]
    assert "ETA —" in frames[0]
    last = frames[-1]
    assert f"run {run_id}  complete " in last
    assert "100.0%" in last
    assert "queue 0 visible, 0 in flight, 0 delayed  |  DLQ 0" in last
    assert "-> consistent" in last
    assert all("consistent" not in frame for frame in frames[:-1])  # the counts only at the end


def test_ctrl_c_ends_the_watch_with_130_and_no_traceback(user_env: dict[str, str]) -> None:
    # GIVEN a run nobody consumes
    env = own_catalog(user_env, "watch", 200)
    assert drugsync(env, "sync", "--range-size", "100").returncode == 0

    # WHEN the operator presses Ctrl-C while it is being watched
    with subprocess.Popen(
        [*DRUGSYNC, "status", "--watch", "--interval", "0.5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_as_in_a_terminal,
    ) as watcher:  # fmt: skip
        reader = LineReader(watcher)
        try:
            assert reader.wait_for("\n", seconds=60), "the watch drew no two frames apart"
            watcher.send_signal(signal.SIGINT)
            watcher.wait(timeout=30)
        finally:
            watcher.kill()
        errors = watcher.stderr.read() if watcher.stderr else ""

    # THEN it exits 130 quietly (and the run is drained for the tests after this one)
    assert watcher.returncode == 130, errors
    assert "Traceback" not in errors
    assert drugsync(env, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull).returncode == 0


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT back to its default in the child, as an operator's terminal gives it: a test run started
    in the background by a shell without job control hands its children SIGINT ignored, and Python
    leaves an ignored SIGINT ignored (this test then timed out, the watch never interrupted)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LineReader:
    """A process's stdout lines, collected by a thread as they come, so a test can wait with a deadline."""

    def __init__(self, process: "subprocess.Popen[str]") -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._lock:
                self._lines.append(line)

    def wait_for(self, line: str, seconds: float) -> bool:
        """True once `line` has come, False if it has not within `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                if line in self._lines:
                    return True
            time.sleep(0.1)
        return False

    def text(self) -> str:
        """Everything read, once the stream has ended."""
        self._thread.join(timeout=30)
        with self._lock:
            return "".join(self._lines)


def test_a_run_id_that_is_not_one_is_refused_without_a_traceback(user_env: dict[str, str]) -> None:
    result = drugsync(user_env, "resume", "not-a-run")
    assert result.returncode == 2
    assert "is not a run id" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_setting_is_reported_plainly(user_env: dict[str, str]) -> None:
    result = drugsync({**user_env, "DRUGSYNC_TABLE": "drugs;drop"}, "status")
    assert result.returncode == 2
    assert "DRUGSYNC_TABLE" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_run_is_refused_naming_the_first_and_supersede_takes_over(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN a run enqueued and not consumed yet (the catalog's first: it builds generation 1, a rebuild)
    env = own_catalog(user_env, "writer", 300)
    first = drugsync(env, "sync", "--range-size", "100", "--json")
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["run_id"]

    # WHEN another run is asked for, then asked for with --supersede
    refused = drugsync(env, "sync", "--range-size", "100")
    taken = drugsync(env, "sync", "--range-size", "100", "--supersede", "--json")

    # THEN the first ask is refused on one line naming the active run and the way out
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(
        f"drugsync: RunActive: a rebuild run cannot start: run {first_id} (rebuild,"
    )
    assert "--supersede" in refused.stderr
    assert "Traceback" not in refused.stderr
    # AND the second takes over: the first run's messages are dropped, the new run completes alone
    assert taken.returncode == 0, taken.stderr
    summary = json.loads(taken.stdout)
    assert summary["superseded"] == [first_id]
    log = tmp_path / "consumers.log"
    work = drugsync(env, "work", "--until-empty", "--wait", "0", "--log-file", str(log))
    assert work.returncode == 0, work.stderr
    assert "7 records ok, 0 failed" in work.stdout  # 3 dropped, 3 ranges and the new run's sweep
    assert log.read_text().count('"message dropped: its run was superseded"') == 3
    runs = {run["run_id"]: run["state"] for run in json.loads(drugsync(env, "runs", "--json").stdout)}
    assert (runs[first_id], runs[summary["run_id"]]) == ("superseded", "complete")
    verified = json.loads(drugsync(env, "verify", "--json").stdout)
    assert (verified["missing"], verified["extra"], verified["stale"]) == (0, 0, 0)
    assert "superseded" in drugsync(env, "runs").stdout


@pytest.mark.usefixtures("demo")
def test_local_down_stops_every_process_it_started(user_env: dict[str, str]) -> None:
    state = json.loads((Path(user_env["DRUGSYNC_STATE_DIR"]) / "stack.json").read_text())
    assert set(state["pids"]) == {"postgres", "redis", "sqs", "lambda"}

    down = drugsync(user_env, "local", "down")

    assert down.returncode == 0, down.stderr
    for name, pid in state["pids"].items():
        assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) still running"


def test_the_installed_drugsync_command_runs_from_any_folder(tmp_path: Path) -> None:
    # `make demo` and an operator run the console script, not `python -m` from the project root.
    installed = Path(sys.executable).with_name("drugsync")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(installed), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "status" in result.stdout


def _synced_with_log(env: dict[str, str], log: Path) -> tuple[float, dict[str, int]]:
    """`sync` then `work --until-empty`: seconds taken, and the consumers' summed drugs and skips."""
    started = time.monotonic()
    assert drugsync(env, "sync", "--range-size", "250").returncode == 0
    assert drugsync(env, "work", "--until-empty", "--wait", "0", "--log-file", str(log)).returncode == 0
    seconds = time.monotonic() - started
    totals = {"drugs": 0, "drugs_skipped": 0}
    for line in log.read_text().splitlines():
        if '"message synced"' in line:
            entry = json.loads(line)
            totals = {key: totals[key] + entry.get(key, 0) for key in totals}
    log.unlink()
    return seconds, totals


def test_a_second_full_run_over_an_unchanged_catalog_embeds_nothing(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    env = own_catalog(user_env, "again", 3000)
    first_seconds, first = _synced_with_log(env, tmp_path / "first.log")
    second_seconds, second = _synced_with_log(env, tmp_path / "second.log")

    eligible = json.loads(drugsync(env, "verify", "--json").stdout)["postgres_eligible"]
    assert first == {"drugs": eligible, "drugs_skipped": 0}
    assert second == {"drugs": 0, "drugs_skipped": eligible}  # nothing embedded or written again
    run = json.loads(drugsync(env, "status", "--json").stdout)["run"]
    assert (run["state"], run["drugs_done"], run["drugs_skipped"]) == ("complete", eligible, eligible)
    assert f"{eligible:,} of them already current" in drugsync(env, "status").stdout
    listed = json.loads(drugsync(env, "runs", "--limit", "2", "--json").stdout)
    assert [entry["drugs_skipped"] for entry in listed] == [eligible, 0]
    print(
        f"full run over {eligible:,} drugs: first {first_seconds:.1f}s, unchanged again {second_seconds:.1f}s"
    )


def _redis(user_env: dict[str, str]):
    import redis

    state = json.loads((Path(user_env["DRUGSYNC_STATE_DIR"]) / "stack.json").read_text())
    return redis.Redis.from_url(state["env"]["REDIS_URL"], protocol=2)


def _alias_target(client, alias: str) -> str:
    info = client.execute_command("FT.INFO", alias)
    return str(dict(zip(info[::2], info[1::2], strict=True))[b"index_name"].decode())


def _generation(client, alias: str) -> dict[str, Any]:
    registry = client.hgetall(f"{alias}@generations")
    return dict(json.loads(registry[registry[b"current"]]))


def test_a_rebuild_under_continuous_search_never_answers_empty_partial_or_failing(
    user_env: dict[str, str],
) -> None:
    from console.demo import search
    from console.services import Services
    from shared.settings import Settings

    # GIVEN a synced catalog read through the alias, generation 1
    env = own_catalog(user_env, "rebuild", 1500)
    sync_and_verify(env)
    client = _redis(user_env)
    alias = env["DRUGSYNC_INDEX_NAME"]
    assert _alias_target(client, alias) == f"{alias}@1"
    old_keys = len(list(client.scan_iter("rebuild@1:*", count=5000)))
    assert old_keys > 1000
    state = json.loads((Path(user_env["DRUGSYNC_STATE_DIR"]) / "stack.json").read_text())["env"]
    settings = Settings(**{"DATABASE_URL": state["DATABASE_URL"], "REDIS_URL": state["REDIS_URL"]},
                        table="drugs_rebuild", key_prefix="rebuild:", index_name=alias)  # fmt: skip

    # WHEN a reader searches through drugsync's search path all along a rebuild
    answers: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        with Services(settings) as services:
            while not stop.is_set():
                try:
                    answers.append(len(search(services, "amoxicillin 500 mg capsule", 10)))
                except Exception as error:  # every failure counts against the rebuild
                    errors.append(f"{type(error).__name__}: {error}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rebuilt = drugsync(env, "rebuild", "--range-size", "100", "--json")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert json.loads(rebuilt.stdout)["generation"] == 2
        assert json.loads(rebuilt.stdout)["mode"] == "rebuild"
        work = drugsync(env, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull)
        assert work.returncode == 0, work.stderr
        time.sleep(0.5)
    finally:
        stop.set()
        reader.join(timeout=30)

    # THEN every answer was full, the alias is on generation 2 and generation 1 is gone
    assert errors == []
    assert len(answers) > 20, answers
    assert set(answers) == {10}
    assert _alias_target(client, alias) == f"{alias}@2"
    assert _generation(client, alias)["number"] == 2
    assert list(client.scan_iter("rebuild@1:*", count=5000)) == []
    assert f"{alias}@1".encode() not in client.execute_command("FT._LIST")
    assert set(client.hkeys(f"{alias}@generations")) == {b"current", b"aliases", b"next", b"2"}
    verified = json.loads(drugsync(env, "verify", "--json").stdout)
    assert (verified["missing"], verified["extra"], verified["stale"]) == (0, 0, 0)
    print(f"{len(answers)} searches during the rebuild, all of 10 hits")


def test_a_new_embedding_dimension_rebuilds_into_a_new_generation_by_itself(user_env: dict[str, str]) -> None:
    # GIVEN a catalog synced at 128 dimensions
    env = {**own_catalog(user_env, "dimension", 600), "DRUGSYNC_EMBEDDING_DIM": "128"}
    sync_and_verify(env)
    client = _redis(user_env)
    alias = env["DRUGSYNC_INDEX_NAME"]
    assert _generation(client, alias)["dimension"] == 128

    # WHEN the dimension changes and a plain sync runs
    wider = {**env, "DRUGSYNC_EMBEDDING_DIM": "256"}
    sync = drugsync(wider, "sync", "--range-size", "100", "--json")
    assert sync.returncode == 0, sync.stderr
    assert (json.loads(sync.stdout)["mode"], json.loads(sync.stdout)["generation"]) == ("rebuild", 2)
    assert drugsync(wider, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull).returncode == 0

    # THEN readers are on a 256-dimensional generation 2, the old one is gone, and nothing drifts
    assert _alias_target(client, alias) == f"{alias}@2"
    assert _generation(client, alias)["dimension"] == 256
    assert list(client.scan_iter("dimension@1:*", count=5000)) == []
    verified = drugsync(wider, "verify", "--json")
    report = json.loads(verified.stdout)
    assert (report["missing"], report["extra"], report["stale"]) == (0, 0, 0), report
    hits = json.loads(drugsync(wider, "search", "lipitor 40 mg tablet", "-k", "3", "--json").stdout)
    assert len(hits) == 3
    status = json.loads(drugsync(wider, "status", "--json").stdout)
    assert status["run"]["state"] == "complete"
    assert status["generations"]["current"]["number"] == 2
    assert (status["run"]["mode"], status["run"]["generation"]) == ("rebuild", 2)
    text = drugsync(wider, "status").stdout
    assert f"generation 2 current (hashing-v1-256, {alias}@2)" in text


LAYOUT_SETTINGS = {
    "json FLOAT32 HNSW": {},
    "hash FLOAT32 HNSW": {"DRUGSYNC_STORAGE": "hash"},
    "hash FLOAT16 FLAT": {
        "DRUGSYNC_STORAGE": "hash", "DRUGSYNC_VECTOR_TYPE": "FLOAT16", "DRUGSYNC_VECTOR_ALGORITHM": "FLAT",
    },
}  # fmt: skip


@pytest.mark.parametrize("layout", sorted(LAYOUT_SETTINGS))
def test_each_storage_layout_syncs_verifies_searches_and_skips_what_is_unchanged(
    user_env: dict[str, str], layout: str
) -> None:
    # GIVEN a catalog and the settings of one layout
    name = "layout_" + layout.replace(" ", "_").lower()
    env = {**own_catalog(user_env, name, 500), **LAYOUT_SETTINGS[layout]}

    # WHEN it is synced, then synced again unchanged
    first = sync_and_verify(env)
    second = sync_and_verify(env)

    # THEN nothing drifts, the generation is of that layout, search finds the drug, nothing was redone
    assert first["index_documents"] == first["postgres_eligible"] == second["index_documents"]
    client = _redis(user_env)
    generation = _generation(client, env["DRUGSYNC_INDEX_NAME"])
    recorded = (
        generation.get("storage", "json"),
        generation.get("vector_type", "FLOAT32"),
        generation.get("algorithm", "HNSW"),
    )
    assert " ".join(recorded) == layout
    key = next(client.scan_iter(f"{name}@1:*", count=1000))
    assert client.type(key) == (b"hash" if layout.startswith("hash") else b"ReJSON-RL")
    hits = json.loads(
        drugsync(env, "search", "atorvastatin calcium 40 mg tablet", "-k", "3", "--json").stdout
    )
    assert hits[0]["name"] == "Atorvastatin Calcium 40 mg tablet"
    run = json.loads(drugsync(env, "status", "--json").stdout)["run"]
    assert (run["drugs_skipped"], run["generation"]) == (first["postgres_eligible"], 1)


def test_a_new_storage_layout_rebuilds_into_a_new_generation_by_itself(user_env: dict[str, str]) -> None:
    # GIVEN a catalog synced as JSON documents
    env = own_catalog(user_env, "relayout", 500)
    sync_and_verify(env)
    client = _redis(user_env)
    alias = env["DRUGSYNC_INDEX_NAME"]

    # WHEN the storage becomes HASH and a plain sync runs
    hashed = {**env, "DRUGSYNC_STORAGE": "hash"}
    sync = drugsync(hashed, "sync", "--range-size", "100", "--json")
    assert sync.returncode == 0, sync.stderr
    assert (json.loads(sync.stdout)["mode"], json.loads(sync.stdout)["generation"]) == ("rebuild", 2)
    assert drugsync(hashed, "work", "--until-empty", "--wait", "0", "--log-file", os.devnull).returncode == 0

    # THEN readers are on a HASH generation 2, the JSON one is gone, and nothing drifts, whichever
    # layout the reader's own settings name: readers follow the generation's recorded layout
    assert _alias_target(client, alias) == f"{alias}@2"
    assert _generation(client, alias)["storage"] == "hash"
    assert list(client.scan_iter("relayout@1:*", count=5000)) == []
    assert {client.type(key) for key in client.scan_iter("relayout@2:*", count=5000)} == {b"hash"}
    for reader in (hashed, env):
        report = json.loads(drugsync(reader, "verify", "--json").stdout)
        assert (report["missing"], report["extra"], report["stale"]) == (0, 0, 0), report
        hits = json.loads(
            drugsync(reader, "search", "atorvastatin calcium 40 mg tablet", "-k", "3", "--json").stdout
        )
        assert hits[0]["name"] == "Atorvastatin Calcium 40 mg tablet"
    again = drugsync(hashed, "sync", "--json")
    assert (json.loads(again.stdout)["mode"], json.loads(again.stdout)["generation"]) == ("full", 2)
