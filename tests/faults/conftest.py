"""The fault-injection suite's report: one row per fault, printed at the end of the test run."""

from dataclasses import dataclass

import pytest

REPORT: list["FaultRow"] = []


@dataclass(frozen=True)
class FaultRow:
    fault: str
    injected: int
    retried: int
    lost: int


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("fault injection")
    terminalreporter.write_line(
        f"{'fault':<50} {'times injected':>14} {'messages retried':>17} {'drugs lost':>11}"
    )
    for row in REPORT:
        terminalreporter.write_line(f"{row.fault:<50} {row.injected:>14} {row.retried:>17} {row.lost:>11}")
