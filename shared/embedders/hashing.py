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
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "as",
        "at",
        "by",
        "for",
        "from",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "used",
        "with",
        "which",
        "this",
        "that",
    ]
)
WORD_WEIGHT = 1.0
PAIR_WEIGHT = 0.5
NGRAM_WEIGHT = 0.25
NGRAM_SIZE = 3


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers; '500mg' becomes '500', 'mg'."""
    return [token for token in _TOKEN.findall(text.lower()) if token not in _STOPWORDS]


def iter_features(tokens: Sequence[str]) -> Iterator[tuple[str, float]]:
    """(feature, weight) pairs: each word, each adjacent pair, each padded char n-gram of a word."""
    for token in tokens:
        yield "w:" + token, WORD_WEIGHT
        if len(token) > NGRAM_SIZE:
            padded = f"<{token}>"
            for start in range(len(padded) - NGRAM_SIZE + 1):
                yield "c:" + padded[start : start + NGRAM_SIZE], NGRAM_WEIGHT
    for left, right in itertools.pairwise(tokens):
        yield f"p:{left} {right}", PAIR_WEIGHT


class HashingEmbedder(BatchingEmbedder):
    """Signed feature hashing into `dimension` buckets, L2-normalised."""

    @property
    def name(self) -> str:
        return f"hashing-v1-{self.dimension}"

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            slots: list[int] = []
            values: list[float] = []
            for feature, weight in iter_features(tokenize(text)):
                slot, sign = _hash_feature(feature, self.dimension)
                slots.append(slot)
                values.append(sign * weight)
            np.add.at(vectors[row], slots, values)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        normalised: Vectors = vectors / norms
        return normalised


@lru_cache(maxsize=1 << 18)
def _hash_feature(feature: str, dimension: int) -> tuple[int, float]:
    """Bucket and sign of a feature; cached because a catalog's vocabulary repeats endlessly."""
    digest = zlib.crc32(feature.encode())
    return digest % dimension, (1.0 if digest & 0x80000000 else -1.0)
