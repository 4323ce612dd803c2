"""The default local embedder: feature hashing of words, word pairs and character n-grams.

Deterministic across processes and machines (crc32, not Python's salted hash), numpy only, and
lexical: texts sharing words and word pieces land close, which is what catalog search needs.
"""

import itertools
import re
import zlib
from collections.abc import Iterator, Sequence
from functools import lru_cache

import numpy as np

from shared.embedders.base import BatchingEmbedder
from shared.ports import Vectors

_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")
_STOPWORDS = frozenset((
    "a", "an", "and", "as", "at", "by", "for", "from", "in", "is", "it", "of", "on", "or", "the",
    "to", "used", "with", "which", "this", "that",
))  # fmt: skip
WORD_WEIGHT = 1.0
PAIR_WEIGHT = 0.5
NGRAM_WEIGHT = 0.25
NGRAM_SIZE = 3


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers; '500mg' becomes '500', 'mg'."""
    return [token for token in _TOKEN.findall(text.lower()) if token not in _STOPWORDS]


def token_features(token: str) -> Iterator[tuple[str, float]]:
    """(feature, weight) pairs of one word: the word itself and its padded character n-grams."""
    yield "w:" + token, WORD_WEIGHT
    if len(token) > NGRAM_SIZE:
        padded = f"<{token}>"
        for start in range(len(padded) - NGRAM_SIZE + 1):
            yield "c:" + padded[start : start + NGRAM_SIZE], NGRAM_WEIGHT


class HashingEmbedder(BatchingEmbedder):
    """Signed feature hashing into `dimension` buckets, L2-normalised."""

    @property
    def name(self) -> str:
        return f"hashing-v1-{self.dimension}"

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        # Collect (slot, value) for the whole batch, shift each row's slots by row * dimension in numpy
        # (a Python generator per feature cost a third of the embedding), and sum with one bincount.
        slots: list[int] = []
        values: list[float] = []
        counts: list[int] = []
        for text in texts:
            before = len(slots)
            self._add_text_features(tokenize(text), slots, values)
            counts.append(len(slots) - before)
        offsets = np.repeat(np.arange(len(texts), dtype=np.int64) * self.dimension, counts)
        cells = np.asarray(slots, dtype=np.int64) + offsets
        sums = np.bincount(cells, weights=values, minlength=len(texts) * self.dimension)
        vectors = sums.reshape(len(texts), self.dimension).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        normalised: Vectors = vectors / norms
        return normalised

    def _add_text_features(self, tokens: list[str], slots: list[int], values: list[float]) -> None:
        """Append the slots and signed weights of a text's words and word pairs. A plain loop over
        cached features: the consumers' embedding runs on the cores Redis needs (make bench, row C)."""
        dimension = self.dimension
        for token in tokens:
            token_slots, token_values = _hashed_token(token, dimension)
            slots += token_slots
            values += token_values
        for left, right in itertools.pairwise(tokens):
            slot, signed = _hashed_pair(left, right, dimension)
            slots.append(slot)
            values.append(signed)


@lru_cache(maxsize=1 << 18)
def _hashed_pair(left: str, right: str, dimension: int) -> tuple[int, float]:
    """Slot and signed weight of a word pair's feature (hashed here, not through _hash_feature's cache:
    a pair cached twice would cost a warm consumer tens of MB)."""
    digest = zlib.crc32(f"p:{left} {right}".encode())
    return digest % dimension, (PAIR_WEIGHT if digest & 0x80000000 else -PAIR_WEIGHT)


@lru_cache(maxsize=1 << 16)
def _hashed_token(token: str, dimension: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Slots and signed weights of one word's features; a catalog's words repeat endlessly."""
    hashed = [(_hash_feature(feature, dimension), weight) for feature, weight in token_features(token)]
    return tuple(slot for (slot, _), _ in hashed), tuple(sign * weight for (_, sign), weight in hashed)


@lru_cache(maxsize=1 << 18)
def _hash_feature(feature: str, dimension: int) -> tuple[int, float]:
    """Bucket and sign of a feature; cached because a catalog's vocabulary repeats endlessly."""
    digest = zlib.crc32(feature.encode())
    return digest % dimension, (1.0 if digest & 0x80000000 else -1.0)
