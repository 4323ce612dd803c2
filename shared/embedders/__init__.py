"""Embedders chosen by settings; heavy SDK clients are created only when that embedder is chosen."""

import boto3

from shared.embedders.base import BatchingEmbedder
from shared.embedders.bedrock import TitanEmbedder
from shared.embedders.hashing import HashingEmbedder
from shared.settings import Settings


def build_embedder(settings: Settings) -> BatchingEmbedder:
    """The embedder the settings name."""
    if settings.embedder == "bedrock":
        client = boto3.client("bedrock-runtime")
        return TitanEmbedder(
            client,
            model_id=settings.bedrock_model_id,
            dimension=settings.embedding_dim,
            batch_size=settings.embed_batch_size,
            concurrency=settings.bedrock_concurrency,
        )
    return HashingEmbedder(settings.embedding_dim, settings.embed_batch_size)


__all__ = ["BatchingEmbedder", "HashingEmbedder", "TitanEmbedder", "build_embedder"]
