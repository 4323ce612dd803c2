import json

import fakeredis
import numpy as np

from shared.documents import build_document, build_embedding_text, fingerprint
from shared.redis_store import RedisDocumentStore
from tests.fakes import make_drug, unit_vector


def test_embedding_text_leads_with_identity_and_skips_empty_fields() -> None:
    drug = make_drug(1, brand_name=None, description=None)
    assert (
        build_embedding_text(drug)
        == "Amoxicillin 500 mg capsule. amoxicillin. 500 mg. capsule. oral. by Teva"
    )


def test_fingerprint_changes_with_content_and_embedder_only() -> None:
    base = make_drug(1)
    assert fingerprint(base, "e1") == fingerprint(make_drug(1), "e1")
    assert fingerprint(base, "e1") != fingerprint(make_drug(1, strength="250 mg"), "e1")
    assert fingerprint(base, "e1") != fingerprint(base, "e2")


def test_documents_are_json_under_deterministic_keys() -> None:
    client = fakeredis.FakeRedis()
    store = RedisDocumentStore(client, key_prefix="t:drug:", index_name="idx", write_batch_size=2)
    drugs = [make_drug(i) for i in (5, 6, 7)]
    documents = [(d.id, build_document(d, unit_vector(8), "e1")) for d in drugs]

    store.write_documents(documents)

    assert sorted(client.keys("t:drug:*")) == [b"t:drug:5", b"t:drug:6", b"t:drug:7"]
    stored = json.loads(client.execute_command("JSON.GET", "t:drug:6", "$"))[0]  # type: ignore[no-untyped-call]
    assert stored["id"] == 6
    assert stored["fingerprint"] == fingerprint(drugs[1], "e1")
    np.testing.assert_allclose(stored["embedding"], unit_vector(8), rtol=1e-6)
    assert store.count_documents() == 3
