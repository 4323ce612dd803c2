"""The consumer's bedrock:InvokeModel grant covers exactly the model its environment names (through an
inference profile: the profile and the model in every Region it routes to), checked on the compiled
template as `make infra-check` does; each planted mistake is caught."""

import copy
from typing import Any

import pytest

from infra.check_template import check_template
from tests.unit.test_template_check import CONSUMER, GOOD, _env, _policy

PROFILE_GRANT = [
    {"Fn::Sub": "arn:aws:bedrock:${AWS::Region}:${AWS::AccountId}:inference-profile/us.cohere.embed-v4:0"},
    "arn:aws:bedrock:*::foundation-model/cohere.embed-v4:0",
]


def _grant(template: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in _policy(template, "ConsumerRole") if s.get("Action") == "bedrock:InvokeModel")


def _deployed(
    model_id: str, grant: list[Any], embedder: str = "bedrock", dimension: str = "1024"
) -> list[str]:
    template = copy.deepcopy(GOOD)
    _env(template, CONSUMER).update(
        DRUGSYNC_BEDROCK_MODEL_ID=model_id,
        DRUGSYNC_EMBEDDER=embedder,
        DRUGSYNC_EMBEDDING_DIM=dimension,
        DRUGSYNC_EMBEDDING_QUOTA_RPM="1500",
    )
    _grant(template)["Resource"] = grant
    return check_template(template)


def test_the_default_template_grants_titan_v2_in_its_region_only() -> None:
    assert _grant(GOOD)["Resource"] == [
        "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0"
    ]
    assert _env(GOOD, CONSUMER)["DRUGSYNC_BEDROCK_MODEL_ID"] == "amazon.titan-embed-text-v2:0"


@pytest.mark.parametrize(
    ("model_id", "grant"),
    [
        ("cohere.embed-english-v3", ["arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-english-v3"]),
        ("us.cohere.embed-v4:0", PROFILE_GRANT),
        (
            "global.cohere.embed-v4:0",
            [
                "arn:aws:bedrock:eu-west-1:123456789012:inference-profile/global.cohere.embed-v4:0",
                "arn:aws:bedrock:*::foundation-model/cohere.embed-v4:0",
            ],
        ),
    ],
)
def test_a_grant_that_covers_the_model_passes(model_id: str, grant: list[Any]) -> None:
    assert _deployed(model_id, grant) == []


@pytest.mark.parametrize(
    ("model_id", "grant", "expected"),
    [
        (
            "cohere.embed-v4:0",
            ["arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-embed-text-v2:0"],
            ["does not allow arn:aws:bedrock:REGION::foundation-model/cohere.embed-v4:0", "allows arn:aws:bedrock:us-east-1::foundation-model/amazon.titan"],
        ),
        (
            "us.cohere.embed-v4:0",
            ["arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-v4:0"],
            ["does not allow arn:aws:bedrock:REGION:ACCOUNT:inference-profile/us.cohere.embed-v4:0", "does not allow arn:aws:bedrock:*::foundation-model/cohere.embed-v4:0"],
        ),
        (
            "us.cohere.embed-v4:0",
            PROFILE_GRANT[:1],
            ["does not allow arn:aws:bedrock:*::foundation-model/cohere.embed-v4:0"],
        ),
        (
            "cohere.embed-v4:0",
            ["arn:aws:bedrock:us-east-1::foundation-model/*"],
            ["does not allow arn:aws:bedrock:REGION::foundation-model/cohere.embed-v4:0", "allows arn:aws:bedrock:us-east-1::foundation-model/*: grant only"],
        ),
    ],
)  # fmt: skip
def test_a_grant_that_misses_the_model_or_allows_more_is_named(
    model_id: str, grant: list[Any], expected: list[str]
) -> None:
    problems = _deployed(model_id, grant)
    assert len(problems) == len(expected), problems
    for problem, words in zip(problems, expected, strict=True):
        assert problem.startswith("ConsumerRole: bedrock:InvokeModel ")
        assert words in problem


def test_a_model_drugsync_does_not_know_is_named() -> None:
    problems = _deployed(
        "cohere.embed-english-v2", ["arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-english-v2"]
    )
    assert len(problems) == 1
    assert "'cohere.embed-english-v2' is not an embedding model drugsync knows" in problems[0]


def test_a_dimension_the_model_does_not_offer_is_named_when_bedrock_embeds() -> None:
    grant = ["arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-english-v3"]
    assert _deployed("cohere.embed-english-v3", grant, dimension="384", embedder="hashing") == []
    problems = _deployed("cohere.embed-english-v3", grant, dimension="384")
    assert len(problems) == 1
    assert (
        "DRUGSYNC_EMBEDDING_DIM 384 is not a dimension cohere.embed-english-v3 offers (1024,)" in problems[0]
    )


def test_an_openai_api_key_in_a_functions_environment_is_refused_without_showing_it() -> None:
    template = copy.deepcopy(GOOD)
    _env(template, CONSUMER)["DRUGSYNC_OPENAI_API_KEY"] = "sk-live-0123456789"

    problems = check_template(template)

    assert len(problems) == 1
    assert "DRUGSYNC_OPENAI_API_KEY in the environment: give DRUGSYNC_*_SECRET_ARN instead" in problems[0]
    assert "sk-live" not in problems[0]


@pytest.mark.parametrize("embedder", ["bedrock", "openai"])
def test_an_api_embedder_deployed_without_a_quota_is_refused_naming_the_param(embedder: str) -> None:
    template = copy.deepcopy(GOOD)
    _env(template, CONSUMER).update(DRUGSYNC_EMBEDDER=embedder, DRUGSYNC_EMBEDDING_DIM="1024")
    problems = [problem for problem in check_template(template) if "quota" in problem]
    assert len(problems) == 1
    assert f"DRUGSYNC_EMBEDDER={embedder} with no embedding quota" in problems[0]
    assert "embeddingQuotaRpm" in problems[0]


@pytest.mark.parametrize("variable", ["DRUGSYNC_EMBEDDING_QUOTA_RPM", "DRUGSYNC_EMBEDDING_QUOTA_TPM"])
def test_a_bedrock_deployment_with_either_quota_passes(variable: str) -> None:
    template = copy.deepcopy(GOOD)
    _env(template, CONSUMER).update(
        DRUGSYNC_EMBEDDER="bedrock", DRUGSYNC_EMBEDDING_DIM="1024", **{variable: "1500"}
    )
    assert check_template(template) == []


def test_the_default_template_passes_the_quota_through_empty() -> None:
    # the deploy params reach the consumer; empty (unset) is fine for the hashing embedder
    assert _env(GOOD, CONSUMER)["DRUGSYNC_EMBEDDING_QUOTA_RPM"] == ""
    assert _env(GOOD, CONSUMER)["DRUGSYNC_EMBEDDING_QUOTA_TPM"] == ""
