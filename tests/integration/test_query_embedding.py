"""A search embeds its text as a query (Embedder.embed_query), not as a document: Cohere prepends a
different token to each, so a query embedded as a document would search with the wrong vector."""

import pytest

from console import demo
from console.services import Services
from shared.embedders.hashing import HashingEmbedder
from shared.generations import RedisGenerations
from shared.ports import Vectors
from shared.wiring import build_store
from tests.conftest import Isolated
from tests.integration.test_generations import K, _filled

pytestmark = pytest.mark.integration


class QueryPrefixingEmbedder(HashingEmbedder):
    """The hashing vectors, but a query is embedded with a marker word, as Cohere's search_query does."""

    def embed_query(self, text: str) -> Vectors:
        vector: Vectors = self.embed_texts([f"capsule capsule {text}"])[0]
        return vector


def test_drugsyncs_search_embeds_its_text_as_a_query(
    test_env: Isolated, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN generation 1 current, embedded by an embedder that embeds queries unlike documents
    gens = RedisGenerations(build_store(test_env.settings))
    first = gens.begin("hashing-v1-128", 128, "run-1")
    _filled(gens.store(first.number))
    gens.switch(first.number)
    embedder = QueryPrefixingEmbedder(128, 16)
    monkeypatch.setattr(demo, "build_embedder_for", lambda settings, name, dimension: embedder)

    # WHEN drugsync's search runs
    with Services(test_env.settings) as services:
        hits = demo.search(services, "lisinopril 10 mg tablet", K)

    # THEN it searched with the query's vector, which ranks otherwise than the document's would
    as_query = gens.store(1).search(embedder.embed_query("lisinopril 10 mg tablet"), K)
    as_document = gens.store(1).search(embedder.embed_texts(["lisinopril 10 mg tablet"])[0], K)
    assert as_query != as_document
    assert hits == as_query
