"""Checks of the scheduled incremental run: in the compiled template, and its default in serverless.yml.

The schedule must exist, invoke the producer with exactly SCHEDULED_INPUT, with no flexible window,
through a role of its own that may invoke the producer and nothing else; serverless.yml must leave
it disabled unless an operator enables it for a stage.
"""

import json
from pathlib import Path
from typing import Any

import yaml

from infra.cfn import referenced

SCHEDULE_TYPE = "AWS::Scheduler::Schedule"
SCHEDULED_INPUT = {"mode": "incremental"}
PRODUCER_HANDLER = "producer/handler.lambda_handler"
SCHEDULER_PRINCIPAL = "scheduler.amazonaws.com"
ENABLED_PARAM = "incrementalScheduleEnabled"


def _producer_id(resources: dict[str, Any]) -> str | None:
    for name, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource.get("Type") == "AWS::Lambda::Function" and properties.get("Handler") == PRODUCER_HANDLER:
            return name
    return None


def check_schedule(template: dict[str, Any]) -> list[str]:
    """One schedule, invoking the producer with exactly the incremental input, through its own role."""
    resources = template.get("Resources", {})
    schedules = {n: r.get("Properties", {}) for n, r in resources.items() if r.get("Type") == SCHEDULE_TYPE}
    if len(schedules) != 1:
        return [f"{len(schedules)} {SCHEDULE_TYPE} resources: exactly one starts the incremental run"]
    (name, schedule), producer = next(iter(schedules.items())), _producer_id(resources)
    target = schedule.get("Target", {})
    problems = []
    if producer is None or referenced(target.get("Arn")) != producer:
        problems.append(f"{name}: its target is not the producer function ({producer})")
    try:
        given = json.loads(target.get("Input", ""))
    except json.JSONDecodeError:
        given = target.get("Input")
    if given != SCHEDULED_INPUT:
        problems.append(f"{name}: input {given!r} is not exactly {json.dumps(SCHEDULED_INPUT)}")
    if schedule.get("State") not in ("ENABLED", "DISABLED"):
        problems.append(f"{name}: State {schedule.get('State')!r} is neither ENABLED nor DISABLED")
    if schedule.get("FlexibleTimeWindow", {}).get("Mode") != "OFF":
        problems.append(f"{name}: a flexible time window would start the run at an unknown moment")
    role = referenced(target.get("RoleArn")) or ""
    return problems + _check_role(name, role, resources.get(role, {}), producer)


def _check_role(schedule: str, role: str, resource: dict[str, Any], producer: str | None) -> list[str]:
    """The schedule's role: assumed by EventBridge Scheduler alone, allowed to invoke the producer only."""
    if resource.get("Type") != "AWS::IAM::Role":
        return [f"{schedule}: its RoleArn names no role of the template ({role or 'none'})"]
    properties = resource.get("Properties", {})
    problems = []
    principals = [
        statement.get("Principal", {}).get("Service")
        for statement in properties.get("AssumeRolePolicyDocument", {}).get("Statement", [])
    ]
    if principals != [SCHEDULER_PRINCIPAL]:
        problems.append(f"{role}: must be assumed by {SCHEDULER_PRINCIPAL} only, not {principals}")
    if properties.get("ManagedPolicyArns"):
        problems.append(f"{role}: managed policies give the schedule more than invoking the producer")
    for policy in properties.get("Policies", []):
        for statement in policy.get("PolicyDocument", {}).get("Statement", []):
            actions = statement.get("Action")
            resources = statement.get("Resource")
            allowed = [resources] if isinstance(resources, dict) else resources or []
            if statement.get("Effect") != "Allow":
                continue
            if actions not in ("lambda:InvokeFunction", ["lambda:InvokeFunction"]):
                problems.append(f"{role}: allows {actions!r}; it may only lambda:InvokeFunction")
            if producer is None or [referenced(arn) for arn in allowed] != [producer]:
                problems.append(f"{role}: may invoke {allowed!r}; only the producer ({producer})")
    return problems


class _AnyTagLoader(yaml.SafeLoader):  # type: ignore[misc]
    """serverless.yml's CloudFormation tags (!Ref, !GetAtt...) read as nothing: only params matter."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, _, node: None)


def check_schedule_default(serverless_yml: Path) -> list[str]:
    """The schedule is off unless a stage's params turn it on (a new stage starts no run by itself)."""
    config = yaml.load(serverless_yml.read_text(), Loader=_AnyTagLoader)  # noqa: S506 (a SafeLoader)
    default = ((config.get("params") or {}).get("default") or {}).get(ENABLED_PARAM)
    if default != "false":
        return [f"{serverless_yml.name}: params.default.{ENABLED_PARAM} is {default!r}; it must be 'false'"]
    return []
