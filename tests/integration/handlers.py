"""Handlers for exercising the local event source: one that overruns, one that crashes."""

import time
from typing import Any


def overrunning_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    time.sleep(60)
    return {"batchItemFailures": []}


def crashing_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise RuntimeError("boom")
