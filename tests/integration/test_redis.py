"""The index and KNN search against the real Redis Stack."""

import threading
import time

import pytest

from console.seed import synthetic_drugs
from shared.documents import build_document, build_embedding_text
from shared.embedders.hashing import HashingEmbedder
from shared.errors import ConfigError
from shared.models import TEXT_FIELDS, Drug
from shared.wiring import build_store
from tests.conftest import Isolated

pytestmark = pytest.mark.integration


def _drugs(count: int) -> list[Drug]:
    drugs = []
    for drug_id, *texts, eligible, updated_at in synthetic_drugs(count):
        if eligible:
            drugs.append(
                Drug(id=drug_id, updated_at=updated_at, **dict(zip(TEXT_FIELDS, texts, strict=True)))
            )
    return drugs


def write_drugs(drugs: list[Drug], embedder: HashingEmbedder, store) -> None:
    vectors = embedder.embed_texts([build_embedding_text(drug) for drug in drugs])
    documents = [(d.id, build_document(d, v, embedder.name)) for d, v in zip(drugs, vectors, strict=True)]
    assert store.write_documents(documents) == []


def test_index_creation_is_idempotent_even_when_concurrent(test_env: Isolated) -> None:
    stores = [build_store(test_env.settings) for _ in range(4)]
    threads = [threading.Thread(target=store.ensure_index, args=(128,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].index_dimension() == 128
    stores[0].ensure_index(128)


def test_an_index_of_another_dimension_is_refused_with_advice(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    store.ensure_index(128)
    with pytest.raises(ConfigError, match=r"128-dimensional.*makes 256.*DRUGSYNC_INDEX_NAME"):
        store.ensure_index(256)


def test_search_ranks_the_drug_searched_for_first(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    embedder = HashingEmbedder(128, batch_size=256)
    store.ensure_index(128)
    drugs = _drugs(3000)
    write_drugs(drugs, embedder, store)
    deadline = time.monotonic() + 30
    while store.indexed_documents()[0] < len(drugs) and time.monotonic() < deadline:
        time.sleep(0.1)

    hits = store.search(embedder.embed_texts(["amoxicillin 500 mg capsule"])[0], 5)

    assert store.indexed_documents() == (len(drugs), 0)
    assert len(hits) == 5
    for hit in hits:
        assert hit.fields["generic_name"] == "amoxicillin"
        assert hit.fields["dosage_form"] == "capsule"
        assert "500 mg" in hit.fields["name"]
    assert hits[0].score >= hits[-1].score


def test_clear_removes_the_index_and_every_document_under_the_prefix(test_env: Isolated) -> None:
    store = build_store(test_env.settings)
    store.ensure_index(128)
    write_drugs(_drugs(300), HashingEmbedder(128, batch_size=100), store)

    removed = store.clear()

    assert removed == len(_drugs(300))
    assert store.count_documents() == 0
    assert store.index_info() is None
