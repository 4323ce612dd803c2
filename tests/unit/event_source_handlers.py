"""Handlers the local event source runs in its child processes (imported there by name)."""

from typing import Any


def partial_failures(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Reports records whose body starts with 'fail'; fails or answers nonsense when a body says so."""
    records = event["Records"]
    bodies = {record["body"] for record in records}
    if "raise" in bodies:
        raise RuntimeError("the invocation failed")
    if "malformed" in bodies:
        return {"batchItemFailures": [{"itemIdentifier": "no-such-record"}]}
    failed = [record["messageId"] for record in records if record["body"].startswith("fail")]
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


def unserialisable(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answers with a set, which Lambda cannot turn into JSON."""
    return {"ids": {1, 2}}


def remaining_millis(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answers with what the context says about the invocation."""
    return {"remaining": context.get_remaining_time_in_millis(), "name": context.function_name}


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answers with the event and the deadline it was given; fails or overruns when the event says so."""
    if event.get("raise"):
        raise ValueError(event["raise"])
    if event.get("sleep"):
        import time

        time.sleep(event["sleep"])
    if event.get("touch"):  # leaves a trace of an invocation nobody waits for
        with open(event["touch"], "w") as trace:
            trace.write(context.function_name)
    return {
        "event": event,
        "function": context.function_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }


def environment(event: dict[str, Any], context: Any) -> dict[str, str]:
    """Answers with the environment its process was given."""
    import os

    return dict(os.environ)
