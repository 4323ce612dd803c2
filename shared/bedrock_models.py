"""The Bedrock embedding models drugsync knows, told apart by model id: settings validate a dimension
against them and the embedders pick their request shape from them. No boto3 here (settings import it).

A model id may be the foundation model's (cohere.embed-v4:0), a cross-Region inference profile's
(us.cohere.embed-v4:0, global.cohere.embed-v4:0) or either as an ARN; the profile's Regions serve the
same model, so its vectors are the same. https://docs.aws.amazon.com/bedrock/latest/userguide/
inference-profiles-support.html
"""

from dataclasses import dataclass

from shared.errors import ConfigError

# Geographic prefixes of system-defined cross-Region inference profiles.
_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "us-gov.", "ca.", "jp.", "au.", "global.")


@dataclass(frozen=True)
class BedrockModel:
    """One embedding model: its family (which request body), its own id and the dimensions it offers."""

    family: str  # "titan-v2", "cohere-v3" or "cohere-v4"
    base_id: str
    dimensions: tuple[int, ...]


KNOWN_MODELS = (
    BedrockModel("titan-v2", "amazon.titan-embed-text-v2:0", (256, 512, 1024)),
    BedrockModel("cohere-v3", "cohere.embed-english-v3", (1024,)),
    BedrockModel("cohere-v3", "cohere.embed-multilingual-v3", (1024,)),
    # Embed v4 answers at 1536 dimensions unless output_dimension asks for fewer.
    BedrockModel("cohere-v4", "cohere.embed-v4:0", (256, 512, 1024, 1536)),
)


def base_model_id(model_id: str) -> str:
    """The foundation model behind a model id, inference profile id or ARN of either."""
    resource = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    for prefix in _PROFILE_PREFIXES:
        if resource.startswith(prefix):
            return resource.removeprefix(prefix)
    return resource


def bedrock_model(model_id: str) -> BedrockModel:
    """The known model this id reaches; ConfigError naming the known ones when it reaches none of them."""
    base = base_model_id(model_id)
    for model in KNOWN_MODELS:
        if base == model.base_id:
            return model
    known = ", ".join(model.base_id for model in KNOWN_MODELS)
    raise ConfigError(
        f"DRUGSYNC_BEDROCK_MODEL_ID {model_id!r} is not an embedding model drugsync knows ({known});"
        " an inference profile (us.cohere.embed-v4:0) or an ARN naming one of them works too"
    )
