import json

import fakeredis
import numpy as np
import pytest

from shared.documents import build_document, build_embedding_text, fingerprint
from shared.errors import ConfigError
from shared.redis_store import RedisDocumentStore, judge_eviction_policy
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


# Every maxmemory-policy Redis has: https://redis.io/docs/latest/develop/reference/eviction/
@pytest.mark.parametrize(
    ("policy", "refused", "warned"),
    [
        ("noeviction", False, False),
        ("volatile-lru", False, True),
        ("volatile-lfu", False, True),
        ("volatile-random", False, True),
        ("volatile-ttl", False, True),
        ("allkeys-lru", True, True),
        ("allkeys-lfu", True, True),
        ("allkeys-random", True, True),
        ("some-future-policy", False, True),
    ],
)
def test_an_eviction_policy_that_may_drop_documents_is_refused_or_warned_about(
    policy: str, refused: bool, warned: bool
) -> None:
    if refused:
        with pytest.raises(ConfigError, match="DRUGSYNC_ALLOW_EVICTION=true"):
            judge_eviction_policy(policy, allow_eviction=False)
    else:
        assert (judge_eviction_policy(policy, allow_eviction=False) is not None) is warned
    # Allowing eviction never refuses, and still says what it risks.
    assert (judge_eviction_policy(policy, allow_eviction=True) is not None) is warned
