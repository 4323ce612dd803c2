"""Embedders chosen by settings; heavy SDK clients are created only when that embedder is chosen."""

import boto3

from shared.bedrock_models import base_model_id, bedrock_model
from shared.embedders.base import BatchingEmbedder
from shared.embedders.bedrock import TitanEmbedder
from shared.embedders.cohere import CohereEmbedder
from shared.embedders.hashing import HashingEmbedder
from shared.embedders.minilm import NAME as MINILM_NAME
from shared.embedders.minilm import load_minilm
from shared.embedders.openai_compat import OpenAICompatibleEmbedder
from shared.embedders.simulated import SimulatedApiEmbedder
from shared.errors import ConfigError
from shared.settings import Settings


def build_embedder(settings: Settings) -> BatchingEmbedder:
    """The embedder the settings name."""
    if settings.embedder == "bedrock":
        client = boto3.client("bedrock-runtime")
        family = bedrock_model(settings.bedrock_model_id).family
        kind = TitanEmbedder if family == "titan-v2" else CohereEmbedder
        return kind(
            client,
            model_id=settings.bedrock_model_id,
            dimension=settings.embedding_dim,
            batch_size=settings.embed_batch_size,
            concurrency=settings.bedrock_concurrency,
        )
    if settings.embedder == "openai":
        return OpenAICompatibleEmbedder.from_settings(settings)
    if settings.embedder == "simulated":
        return SimulatedApiEmbedder(
            settings.embedding_dim,
            settings.embed_batch_size,
            latency_seconds=settings.simulated_latency_ms / 1000,
            texts_per_request=settings.simulated_texts_per_request,
            concurrency=settings.bedrock_concurrency,
        )
    if settings.embedder == "minilm":
        return load_minilm(settings.embed_batch_size, settings.local_model_threads)
    return HashingEmbedder(settings.embedding_dim, settings.embed_batch_size)


def embedder_name(settings: Settings) -> str:
    """The name (model and dimension) of the embedder the settings name, without building its client:
    what the producer records for a generation and compares with the current one's."""
    if settings.embedder == "bedrock":
        if bedrock_model(settings.bedrock_model_id).family == "titan-v2":
            return f"{settings.bedrock_model_id}-{settings.embedding_dim}"
        return f"{base_model_id(settings.bedrock_model_id)}-{settings.embedding_dim}"
    if settings.embedder == "openai":
        return f"openai:{settings.openai_model}-{settings.embedding_dim}"
    if settings.embedder == "simulated":
        return f"simulated-api-{settings.embedding_dim}"
    if settings.embedder == "minilm":
        return MINILM_NAME
    return f"hashing-v1-{settings.embedding_dim}"


def build_embedder_for(settings: Settings, name: str, dimension: int) -> BatchingEmbedder:
    """The embedder that made a generation (recorded as `name`, `dimension`), to embed queries as its
    documents were; ConfigError when these settings cannot make it (another model or kind)."""
    embedder = build_embedder(settings.model_copy(update={"embedding_dim": dimension}))
    if embedder.name != name:
        raise ConfigError(
            f"the current generation was embedded by {name}, but these settings make {embedder.name}:"
            " set DRUGSYNC_EMBEDDER / DRUGSYNC_BEDROCK_MODEL_ID / DRUGSYNC_OPENAI_MODEL as the deployment's"
        )
    return embedder


__all__ = [
    "BatchingEmbedder",
    "CohereEmbedder",
    "HashingEmbedder",
    "OpenAICompatibleEmbedder",
    "SimulatedApiEmbedder",
    "TitanEmbedder",
    "build_embedder",
    "build_embedder_for",
    "embedder_name",
]
