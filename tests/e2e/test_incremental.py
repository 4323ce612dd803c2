"""Incremental runs through the CLI on the local stack: change capture, and the updated_at watermark."""

import json
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest
import redis
from psycopg import sql

from shared.generations import generation_prefix
from tests.e2e.test_cli import drugsync, own_catalog
from tests.e2e.test_cli import user_env as user_env  # the module's own stack and state folder

pytestmark = pytest.mark.e2e


def _stack_env(env: dict[str, str]) -> dict[str, str]:
    state = json.loads((Path(env["DRUGSYNC_STATE_DIR"]) / "stack.json").read_text())
    return dict(state["env"])


@pytest.fixture
def captured(user_env: dict[str, str]) -> dict[str, str]:
    return own_catalog(user_env, f"incr{uuid.uuid4().hex[:6]}", 1500)


def _work(env: dict[str, str], log: Path) -> dict[str, int]:
    """`work --until-empty`; the consumers' summed drugs written, skipped and documents removed, and
    the texts they sent to the embedder (the TextsEmbedded metric of their EMF lines)."""
    assert drugsync(env, "work", "--until-empty", "--wait", "0", "--log-file", str(log)).returncode == 0
    totals = {"drugs": 0, "drugs_skipped": 0, "documents_removed": 0}
    embedded = 0
    for line in log.read_text().splitlines():
        if '"message synced"' in line:
            entry = json.loads(line)
            totals = {key: totals[key] + entry.get(key, 0) for key in totals}
        elif '"TextsEmbedded"' in line:
            value = json.loads(line)["TextsEmbedded"]
            embedded += sum(value) if isinstance(value, list) else value
    totals["texts_embedded"] = embedded
    log.unlink()
    return totals


def _documents(env: dict[str, str]) -> dict[int, bytes]:
    """Every stored document of the current generation, as the bytes Redis returns."""
    client = redis.Redis.from_url(_stack_env(env)["REDIS_URL"])
    current = client.hget(f"{env['DRUGSYNC_INDEX_NAME']}@generations", "current")
    assert current is not None, "no current generation"
    prefix = generation_prefix(env["DRUGSYNC_KEY_PREFIX"], int(current))
    keys = sorted(client.scan_iter(match=f"{prefix}*", count=1000))
    values = [client.execute_command("JSON.GET", key) for key in keys]  # type: ignore[no-untyped-call]
    return {int(key.decode()[len(prefix) :]): value for key, value in zip(keys, values, strict=True)}


def _verified(env: dict[str, str]) -> dict[str, int]:
    report = json.loads(drugsync(env, "verify", "--json").stdout)
    assert (report["missing"], report["extra"], report["stale"]) == (0, 0, 0), report
    return dict(report)


def _ids(conn: psycopg.Connection, table: str, where: str, limit: int, offset: int) -> list[int]:
    query = sql.SQL("SELECT id FROM {} WHERE {} ORDER BY id LIMIT %s OFFSET %s")
    composed = query.format(sql.Identifier(table), sql.SQL(where))
    return [row[0] for row in conn.execute(composed, [limit, offset])]


def test_an_incremental_run_from_capture_syncs_exactly_what_changed_and_touches_nothing_else(
    captured: dict[str, str], tmp_path: Path
) -> None:
    env, table = captured, captured["DRUGSYNC_TABLE"]
    # GIVEN capture installed, refused without a full sync after it, then a full sync
    install = drugsync(env, "capture", "install")
    assert install.returncode == 0, install.stderr
    assert "Run a full `drugsync sync` now" in install.stdout
    refused = drugsync(env, "sync", "--incremental")
    assert refused.returncode == 2
    assert "run `drugsync sync` first" in refused.stderr
    assert drugsync(env, "sync", "--range-size", "250").returncode == 0
    _work(env, tmp_path / "full.log")
    _verified(env)
    before = _documents(env)

    # WHEN rows are inserted, edited, deleted, de-listed, listed again, renumbered, or touched in a
    # way drugsync does not sync (updated_at alone)
    with psycopg.connect(_stack_env(env)["DATABASE_URL"], autocommit=True) as conn:
        edited = _ids(conn, table, "eligible", 4, 10)
        deleted = _ids(conn, table, "eligible", 3, 100)
        delisted = _ids(conn, table, "eligible", 2, 200)
        relisted = _ids(conn, table, "NOT eligible", 1, 0)
        renumbered = _ids(conn, table, "eligible", 1, 300)
        touched = _ids(conn, table, "eligible", 5, 400)
        t = sql.Identifier(table)
        conn.execute(sql.SQL("INSERT INTO {} (id, ndc, name) VALUES (5000001, 'n1', 'Newdrug 5 mg tablet'),"
                             " (5000002, 'n2', 'Otherdrug 1 mg tablet')").format(t))  # fmt: skip
        conn.execute(
            sql.SQL("INSERT INTO {} (id, ndc, name, eligible) VALUES (5000003, 'n3', 'x', false)").format(t)
        )
        conn.execute(sql.SQL("UPDATE {} SET description = 'Revised.' WHERE id = ANY(%s)").format(t), [edited])
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(t), [deleted])
        conn.execute(sql.SQL("UPDATE {} SET eligible = false WHERE id = ANY(%s)").format(t), [delisted])
        conn.execute(sql.SQL("UPDATE {} SET eligible = true WHERE id = ANY(%s)").format(t), [relisted])
        conn.execute(sql.SQL("UPDATE {} SET id = 5000004 WHERE id = %s").format(t), renumbered)
        conn.execute(sql.SQL("UPDATE {} SET updated_at = now() WHERE id = ANY(%s)").format(t), [touched])
    status = json.loads(drugsync(env, "capture", "status", "--json").stdout)
    assert status["installed"] is True

    started = drugsync(env, "sync", "--incremental", "--json")
    assert started.returncode == 0, started.stderr
    summary = json.loads(started.stdout)
    upserted = {5000001, 5000002, *edited, *relisted, 5000004}
    removed = {*deleted, *delisted, *renumbered}
    assert (summary["mode"], summary["changes_source"]) == ("incremental", "capture")
    assert summary["changed_ids"] == len(upserted | removed | {5000003}) == status["unclaimed_changes"]
    work = _work(env, tmp_path / "incremental.log")

    # THEN Redis is exactly in line, only the changed eligible rows were embedded and written, and
    # every other document is byte for byte what it was
    _verified(env)
    assert work == {
        "drugs": len(upserted), "drugs_skipped": 0, "documents_removed": len(removed),
        "texts_embedded": len(upserted),  # the embedding calls carried exactly the changed eligible rows
    }  # fmt: skip
    after = _documents(env)
    assert set(before) - set(after) == removed
    assert set(after) - set(before) == {5000001, 5000002, 5000004, *relisted}
    assert {i for i in set(before) & set(after) if before[i] != after[i]} == set(edited)
    run = json.loads(drugsync(env, "status", "--json").stdout)["run"]
    assert run["state"] == "complete"
    released = json.loads(drugsync(env, "capture", "status", "--json").stdout)
    assert released["pending_changes"] == 0

    # AND an incremental run with nothing changed still ends, complete, having synced nothing
    empty = json.loads(drugsync(env, "sync", "--incremental", "--json").stdout)
    assert empty["changed_ids"] == 0
    nothing = {"drugs": 0, "drugs_skipped": 0, "documents_removed": 0, "texts_embedded": 0}
    assert _work(env, tmp_path / "empty.log") == nothing
    assert json.loads(drugsync(env, "status", "--json").stdout)["run"]["state"] == "complete"
    assert _documents(env) == after


def test_an_abandoned_incremental_run_releases_nothing_and_the_next_one_syncs_its_changes(
    captured: dict[str, str], tmp_path: Path
) -> None:
    env, table = captured, captured["DRUGSYNC_TABLE"]
    assert drugsync(env, "capture", "install").returncode == 0
    assert drugsync(env, "sync").returncode == 0
    _work(env, tmp_path / "full.log")
    with psycopg.connect(_stack_env(env)["DATABASE_URL"], autocommit=True) as conn:
        edited = _ids(conn, table, "eligible", 3, 20)
        conn.execute(
            sql.SQL("UPDATE {} SET name = name || ' (new)' WHERE id = ANY(%s)").format(sql.Identifier(table)),
            [edited],
        )

    # WHEN an incremental run's messages are lost (its consumers died; the queue was purged)
    abandoned = json.loads(drugsync(env, "sync", "--incremental", "--json").stdout)
    assert abandoned["changed_ids"] == 3
    stack = _stack_env(env)
    sqs = boto3.client("sqs", endpoint_url=stack["AWS_ENDPOINT_URL"], region_name=stack["AWS_DEFAULT_REGION"],
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    sqs.purge_queue(QueueUrl=stack["QUEUE_URL"])
    assert json.loads(drugsync(env, "capture", "status", "--json").stdout)["pending_changes"] == 3
    stale = json.loads(drugsync(env, "verify", "--json").stdout)
    assert stale["stale_ids"] == edited

    # THEN the next incremental run (taking over the abandoned run's claim) claims the same changes
    # and brings Redis in line
    again = json.loads(drugsync(env, "sync", "--incremental", "--supersede", "--json").stdout)
    assert again["changed_ids"] == 3
    assert _work(env, tmp_path / "again.log")["drugs"] == 3
    _verified(env)
    assert json.loads(drugsync(env, "capture", "status", "--json").stdout)["pending_changes"] == 0
    runs = json.loads(drugsync(env, "runs", "--json", "--limit", "50").stdout)
    states = {run["run_id"]: run["state"] for run in runs}
    assert states[again["run_id"]] == "complete"
    assert states[abandoned["run_id"]] != "complete"


def test_a_row_failing_in_an_incremental_run_is_kept_and_synced_by_the_next(
    captured: dict[str, str], tmp_path: Path
) -> None:
    env, table = captured, captured["DRUGSYNC_TABLE"]
    assert drugsync(env, "capture", "install").returncode == 0
    assert drugsync(env, "sync").returncode == 0
    _work(env, tmp_path / "full.log")
    t = sql.Identifier(table)
    with psycopg.connect(_stack_env(env)["DATABASE_URL"], autocommit=True) as conn:
        poison, fine = _ids(conn, table, "eligible", 2, 30)
        conn.execute(sql.SQL("UPDATE {} SET ndc = '' WHERE id = %s").format(t), [poison])  # a broken row
        conn.execute(sql.SQL("UPDATE {} SET name = 'Fine 1 mg' WHERE id = %s").format(t), [fine])

        assert json.loads(drugsync(env, "sync", "--incremental", "--json").stdout)["changed_ids"] == 2
        _work(env, tmp_path / "first.log")
        assert (
            json.loads(drugsync(env, "status", "--json").stdout)["run"]["state"] == "complete_with_failures"
        )
        assert json.loads(drugsync(env, "capture", "status", "--json").stdout)["pending_changes"] == 1

        conn.execute(sql.SQL("UPDATE {} SET ndc = 'fixed' WHERE id = %s").format(t), [poison])
    second = json.loads(drugsync(env, "sync", "--incremental", "--json").stdout)
    assert second["changed_ids"] == 1  # the failed id, once, though recorded twice
    assert _work(env, tmp_path / "second.log")["drugs"] == 1
    _verified(env)
    assert json.loads(drugsync(env, "status", "--json").stdout)["run"]["state"] == "complete"


def test_without_capture_the_watermark_and_the_sweep_catch_an_edit_and_a_deletion(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    env = own_catalog(user_env, "mark", 800)
    table = env["DRUGSYNC_TABLE"]
    refused = drugsync(env, "sync", "--incremental")
    assert refused.returncode == 2
    assert "run `drugsync sync` first" in refused.stderr
    assert drugsync(env, "sync").returncode == 0
    _work(env, tmp_path / "full.log")
    t = sql.Identifier(table)
    with psycopg.connect(_stack_env(env)["DATABASE_URL"], autocommit=True) as conn:
        edited, deleted = _ids(conn, table, "eligible", 2, 50)
        conn.execute(sql.SQL("UPDATE {} SET strength = '7 mg', updated_at = now() WHERE id = %s").format(t),
                     [edited])  # fmt: skip
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(t), [deleted])

    started = drugsync(env, "sync", "--incremental", "--json")
    assert started.returncode == 0, started.stderr
    summary = json.loads(started.stdout)
    assert (summary["changes_source"], summary["changed_ids"]) == ("watermark", 1)
    work = _work(env, tmp_path / "incremental.log")

    assert (work["drugs"], work["documents_removed"]) == (1, 1)  # the edit written; the sweep removed one
    _verified(env)
    assert json.loads(drugsync(env, "status", "--json").stdout)["run"]["state"] == "complete"
