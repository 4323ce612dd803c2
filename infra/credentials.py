"""No credential in a compiled template: an allow-list of environment variables, not a deny-list.

Anyone allowed lambda:GetFunctionConfiguration or cloudformation:GetTemplate reads a function's
environment and the template in clear. A deny-list of suspicious names is passed by any name it
did not foresee (DB_PWD, DRUGSYNC_REDIS_AUTH), so a function may hold only the variables drugsync
reads (shared/settings.py) and Powertools' own; an *_ARN variable must hold a complete ARN (a
secret's with the 6-character suffix Secrets Manager adds); and every string, with Fn::Join and
Fn::Sub flattened first, is scanned for what carries a credential (user:password@, password=,
token=, a dynamic reference that CloudFormation resolves into plain text).

The problems name where, never what: the check's own output must not leak what it found.
"""

import re
from collections.abc import Iterator
from typing import Any

from shared.settings import settings_variables

# Variables that hold a connection URL, credentials included: the functions read the secret ARNs.
URL_VARIABLES = frozenset({"DATABASE_URL", "REDIS_URL", "DRUGSYNC_DATABASE_URL", "DRUGSYNC_REDIS_URL"})
# Every variable that holds a credential itself: each has a DRUGSYNC_*_SECRET_ARN counterpart.
CREDENTIAL_VARIABLES = URL_VARIABLES | {"DRUGSYNC_OPENAI_API_KEY"}
# What Powertools for AWS Lambda (Python) reads; none of them holds a credential.
# https://docs.powertools.aws.dev/lambda/python/latest/#environment-variables
POWERTOOLS_VARIABLES = frozenset(
    {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_METRICS_FUNCTION_NAME",
     "POWERTOOLS_METRICS_DISABLED", "POWERTOOLS_TRACE_DISABLED", "POWERTOOLS_TRACER_CAPTURE_RESPONSE",
     "POWERTOOLS_TRACER_CAPTURE_ERROR", "POWERTOOLS_TRACE_MIDDLEWARES", "POWERTOOLS_LOGGER_LOG_EVENT",
     "POWERTOOLS_LOGGER_SAMPLE_RATE", "POWERTOOLS_LOG_DEDUPLICATION_DISABLED", "POWERTOOLS_LOG_LEVEL",
     "POWERTOOLS_PARAMETERS_MAX_AGE", "POWERTOOLS_PARAMETERS_SSM_DECRYPT", "POWERTOOLS_DEV",
     "POWERTOOLS_DEBUG", "POWERTOOLS_IDEMPOTENCY_DISABLED"}
)  # fmt: skip
# arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX; IAM matches a secret's ARN exactly,
# and without the suffix a name could match another secret made later under the same name.
# https://docs.aws.amazon.com/secretsmanager/latest/userguide/reference_iam-permissions.html
SECRET_ARN = re.compile(
    r"^arn:aws(-cn|-us-gov)?:secretsmanager:[a-z]{2}(-[a-z]+)+-\d:\d{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$"
)
ANY_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:[a-z0-9-]+:([a-z]{2}(-[a-z]+)+-\d)?:(\d{12})?:[^\x00\s]+$")
# What CloudFormation substitutes for a pseudo parameter; a sample value of the right shape.
PSEUDO_PARAMETERS = {"AWS::Region": "us-east-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}
UNKNOWN = "\x00"  # a value only known at deploy time (a parameter, a resource): never a valid ARN
CARRIERS = (
    (re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\s@]+@"), "a URL with credentials (user:password@)"),
    (
        re.compile(r"\b(password|passwd|pwd|token|secret|api_?key|auth_?token)=", re.IGNORECASE),
        "a password= or token=",
    ),
    (  # the same as JSON or YAML ("password": "...", password: ...); not `:secret:` inside an ARN
        re.compile(r"\b(password|passwd|pwd|api_?key|auth_?token)[\"']?\s*:\s*[^\s,}]", re.IGNORECASE),
        "a password: or auth_token: field",
    ),
    (
        re.compile(r"\{\{resolve:(ssm|ssm-secure|secretsmanager):", re.IGNORECASE),
        "a dynamic reference CloudFormation resolves into plain text",
    ),
)
Template = dict[str, Any]


def allowed_variables() -> frozenset[str]:
    """Every variable drugsync reads but those holding credentials, and Powertools' own."""
    return (settings_variables() - CREDENTIAL_VARIABLES) | POWERTOOLS_VARIABLES


def check_no_credentials(template: Template) -> list[str]:
    """No credential in the template's strings, nor an unknown variable or a bad ARN in an environment."""
    problems = [
        f"{where}: {carrier}: keep credentials in Secrets Manager" for where, carrier in _carriers(template)
    ]
    allowed = allowed_variables()
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") == "AWS::Lambda::Function":
            environment = resource.get("Properties", {}).get("Environment", {}).get("Variables", {})
            problems += _check_environment(name, environment, allowed, template)
    return problems


def _check_environment(name: str, variables: Any, allowed: frozenset[str], template: Template) -> list[str]:
    if not isinstance(variables, dict):
        return [f"{name}: Environment.Variables is not a plain mapping: its variables cannot be checked"]
    problems = []
    for variable, value in variables.items():
        upper = variable.upper()
        if upper in CREDENTIAL_VARIABLES:
            problems.append(f"{name}: {variable} in the environment: give DRUGSYNC_*_SECRET_ARN instead")
        elif upper not in allowed:
            problems.append(
                f"{name}: {variable} is not a variable drugsync reads (shared/settings.py, Powertools):"
                " nothing but those may be in a function's environment"
            )
        unset = value == ""  # an optional ARN left empty, as an unset param leaves it
        if (
            upper.endswith("_ARN")
            and not unset
            and not _is_arn(value, template, secret=upper.endswith("_SECRET_ARN"))
        ):
            kind = (
                "Secrets Manager secret (arn:...:secret:NAME-XXXXXX)" if upper.endswith("_SECRET_ARN") else ""
            )
            problems.append(f"{name}: {variable} is not the complete ARN of a {kind or 'resource'}")
    return problems


def _is_arn(value: Any, template: Template, secret: bool) -> bool:
    """A complete ARN as a string, or a Ref/GetAtt/Sub/Join that produces one."""
    resources = template.get("Resources", {})
    target = _target(value)
    if target is not None:
        kind = resources.get(target, {}).get("Type")
        return kind == "AWS::SecretsManager::Secret" if secret else kind is not None
    return (SECRET_ARN if secret else ANY_ARN).match(flatten(value)) is not None


def _target(value: Any) -> str | None:
    """The resource behind a Ref, or behind Fn::GetAtt of an attribute that is an ARN (Id, Arn)."""
    if isinstance(value, dict) and set(value) == {"Ref"} and isinstance(value["Ref"], str):
        return None if value["Ref"] in PSEUDO_PARAMETERS else value["Ref"]
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        target = value["Fn::GetAtt"]
        resource, _, attribute = (
            target if isinstance(target, str) else ".".join(map(str, target))
        ).partition(".")
        return resource if attribute in ("Id", "Arn") else None
    return None


def flatten(value: Any) -> str:
    """The string a value becomes at deploy time, UNKNOWN where only deployment can tell."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | bool):
        return str(value)
    if isinstance(value, dict) and len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Ref" and argument in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[argument]
        if function == "Fn::Join" and isinstance(argument, list) and len(argument) == 2:
            delimiter, parts = argument
            if isinstance(parts, list):
                return flatten(delimiter).join(flatten(part) for part in parts)
        if function == "Fn::Sub":
            return _substitute(argument)
    return UNKNOWN


def _substitute(argument: Any) -> str:
    text, names = [*argument, {}][:2] if isinstance(argument, list) else (argument, {})
    if not isinstance(text, str) or not isinstance(names, dict):
        return UNKNOWN

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in names:
            return flatten(names[name])
        return PSEUDO_PARAMETERS.get(name, UNKNOWN)

    # ${!Literal} stays as `${Literal}`: https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/intrinsic-function-reference-sub.html
    return re.sub(r"\$\{(?!!)([^}]+)\}", value, text).replace("${!", "${")


def _carriers(value: Any, where: str = "template") -> Iterator[tuple[str, str]]:
    """(where, what) of each string that carries a credential, Fn::Join and Fn::Sub flattened."""
    if isinstance(value, str) or (isinstance(value, dict) and {"Fn::Join", "Fn::Sub"} & set(value)):
        text = flatten(value)
        found = next((carrier for pattern, carrier in CARRIERS if pattern.search(text)), None)
        if found is not None:
            yield where, found
            return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _carriers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _carriers(item, f"{where}[{index}]")
