"""Texts per second of the optional local model (`.[local-model]`) beside the hashing embedder.

    .venv/bin/python -m benchmarks.local_model [--texts 512] [--threads 1 2]

The synthetic catalog's own embedding texts, as a consumer embeds them; the model is timed after one
warm-up call. Shared machines are noisy: compare rows of one run.
"""

import argparse
import time

from console.seed import synthetic_drugs
from shared.documents import build_embedding_text
from shared.embedders.base import BatchingEmbedder
from shared.embedders.hashing import HashingEmbedder
from shared.embedders.minilm import TOKENIZER_PATH, load_minilm
from shared.models import TEXT_FIELDS, Drug


def sample_texts(count: int) -> list[str]:
    """The embedding texts of the synthetic catalog's first `count` drugs."""
    drugs = [
        Drug(id=drug_id, updated_at=updated_at, **dict(zip(TEXT_FIELDS, texts, strict=True)))
        for drug_id, *texts, _eligible, updated_at in synthetic_drugs(count)
    ]
    return [build_embedding_text(drug) for drug in drugs]


def texts_per_second(embedder: BatchingEmbedder, texts: list[str]) -> float:
    embedder.embed_texts(texts[:8])  # warm-up: first-call allocations, caches
    began = time.perf_counter()
    embedder.embed_texts(texts)
    return len(texts) / (time.perf_counter() - began)


def mean_tokens(texts: list[str]) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
    tokenizer.no_padding()  # tokenizer.json pads every text to 128
    return sum(len(tokenizer.encode(text).ids) for text in texts) / len(texts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    texts = sample_texts(args.texts)
    print(f"{args.texts} catalog texts, {mean_tokens(texts):.0f} word pieces each on average")
    print(f"{'hashing-v1-384':<36} {texts_per_second(HashingEmbedder(384, 256), texts):>10,.0f} texts/s")
    for threads in args.threads:
        rate = texts_per_second(load_minilm(batch_size=256, threads=threads), texts)
        print(f"{'all-minilm-l6-v2-int8-384, ' + str(threads) + ' thread(s)':<36} {rate:>10,.0f} texts/s")


if __name__ == "__main__":
    main()
