"""The local Lambda runtime: a fresh interpreter per cold start, events over a socket, Lambda's errors."""

import pytest

from console.cli import main
from console.invoker import InvocationWorker

HANDLERS = "tests.unit.event_source_handlers"


@pytest.fixture
def worker_of():
    started: list[InvocationWorker] = []

    def start(handler: str) -> InvocationWorker:
        started.append(InvocationWorker(handler, "drugsync-test"))
        return started[-1]

    yield start
    for worker in started:
        worker.close()


def test_a_warm_worker_reuses_its_process_and_reports_one_init(worker_of) -> None:
    worker = worker_of(f"{HANDLERS}:remaining_millis")
    first = worker.invoke({}, timeout_seconds=30)
    pid = worker.pid
    second = worker.invoke({}, timeout_seconds=30)
    assert first.response is not None
    assert second.response is not None
    assert 0 < second.response["remaining"] <= 30_000
    assert second.response["name"] == "drugsync-test"
    assert worker.pid == pid
    assert worker.cold_starts == 1
    assert len(worker.init_ms) == 1
    assert worker.init_ms[0] > 0


def test_a_handler_that_cannot_be_imported_fails_the_invocation_naming_why(worker_of) -> None:
    worker = worker_of("tests.unit.no_such_module:lambda_handler")
    result = worker.invoke({}, timeout_seconds=30)
    assert result.response is None
    assert result.error_type == "Runtime.ImportModuleError"
    assert result.error_message == (
        "Unable to import module 'tests.unit.no_such_module': No module named 'tests.unit.no_such_module'"
    )
    assert worker.cold_starts == 0


def test_a_response_that_is_not_json_is_an_error(worker_of) -> None:
    result = worker_of(f"{HANDLERS}:unserialisable").invoke({}, timeout_seconds=30)
    assert result.response is None
    assert result.error_type == "Runtime.MarshalError"
    assert (result.error_message or "").startswith("Unable to marshal response: Object of type set")


@pytest.mark.parametrize("command", ["sync", "work"])
def test_code_must_be_an_unpacked_artefact(
    command: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--code", str(tmp_path)])
    assert exited.value.code == 2
    assert "is not an unpacked artefact" in capsys.readouterr().err
