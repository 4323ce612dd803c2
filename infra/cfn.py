"""Reading CloudFormation templates: what a value refers to."""

from typing import Any


def referenced(value: Any) -> str | None:
    """The logical id behind a Ref or Fn::GetAtt, if the value is one."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else target.split(".")[0])
    return None
