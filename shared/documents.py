"""How a drug becomes text to embed and a Redis document."""

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.models import TEXT_FIELDS, Drug
from shared.ports import Vectors

# Order matters: the most telling fields first, so truncating providers keep what identifies a drug.
_EMBED_FIELDS = ("name", "generic_name", "brand_name", "strength", "dosage_form", "route")


def build_embedding_text(drug: Drug) -> str:
    """Text that describes a drug for search: identity first, then maker and description."""
    parts = [getattr(drug, field) for field in _EMBED_FIELDS]
    parts.append(f"by {drug.manufacturer}" if drug.manufacturer else None)
    parts.append(drug.description)
    return ". ".join(part for part in parts if part)


# The version of build_embedding_text: bump it when the text a drug is embedded as changes, so every
# fingerprint changes and the next run embeds every drug again (nothing is skipped as current).
TEXT_TEMPLATE_VERSION = 1


def fingerprint(drug: Drug, embedder_name: str) -> str:
    """Content fingerprint: changes when any stored field, the text template or the embedder (model
    and dimension, in its name) changes; a document carrying it needs neither embedding nor writing."""
    return row_fingerprint(drug.id, [getattr(drug, field) for field in TEXT_FIELDS], embedder_name)


def row_fingerprint(drug_id: int, texts: Sequence[str | None], embedder_name: str) -> str:
    """The same fingerprint from a raw row's text fields (in TEXT_FIELDS order), without validation.

    Each part is length-prefixed, so no two different rows share an encoding; None is '-'.
    """
    parts = [
        str(drug_id),
        embedder_name,
        f"template-{TEXT_TEMPLATE_VERSION}",
        *("-" if text is None else f"{len(text)}:{text}" for text in texts),
    ]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def document_version(read_at: datetime | None) -> int | None:
    """A snapshot time as whole microseconds since the Unix epoch: an exact integer that orders like it.

    A timestamp without a time zone is read as UTC, so its values keep their order.
    """
    if read_at is None:
        return None
    if read_at.tzinfo is None:
        read_at = read_at.replace(tzinfo=UTC)
    return (read_at - _EPOCH) // _MICROSECOND


def is_stale(stored: int | None, incoming: int | None) -> bool:
    """Newest wins: skip a write only when the stored document is strictly newer.

    A drug read without a snapshot time (version None) on either side carries no ordering
    information, so that write goes through; so does an equal version (the same snapshot again).
    The Redis store's Lua script applies the same rule on the server.
    """
    return stored is not None and incoming is not None and stored > incoming


def build_document(
    drug: Drug, embedding: Vectors, embedder_name: str, known_fingerprint: str | None = None
) -> dict[str, Any]:
    """The document stored for one drug; `version` orders writes of it (newest wins).

    The vector stays a numpy array: the store encodes it for its layout (orjson or packed bytes),
    never through a list of Python floats. `known_fingerprint`: the drug's fingerprint for this
    embedder, when the caller has just computed it (the consumer compares it with the stored one).
    """
    document: dict[str, Any] = {field: getattr(drug, field) for field in TEXT_FIELDS}
    document["id"] = drug.id
    document["updated_at"] = None if drug.updated_at is None else drug.updated_at.isoformat()
    document["version"] = document_version(drug.read_at)
    document["fingerprint"] = known_fingerprint or fingerprint(drug, embedder_name)
    document["embedding"] = embedding
    return document
