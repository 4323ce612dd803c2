"""A local run with the optional model (`.[local-model]`, DRUGSYNC_EMBEDDER=minilm), as a user runs it."""

import json

import pytest

from console.catalog_data import GENERICS
from tests.e2e.test_cli import drugsync, own_catalog, sync_and_verify
from tests.e2e.test_cli import user_env as user_env  # the module's own stack and state folder

pytestmark = pytest.mark.e2e
# Many drugs answer it: an HNSW search (EF_RUNTIME 10) missed the 2 zolpidem documents of this catalog for
# "help me sleep" in 5 of 12 index builds; none missed every allergy drug.
FOR_ALLERGIES = {generic for generic, _, _, use, _ in GENERICS if "allerg" in use}


def test_a_catalog_synced_with_the_local_model_is_searched_by_meaning(user_env: dict[str, str]) -> None:
    # GIVEN a small catalog synced end to end (producer, queue, consumers) with the local model
    env = {**own_catalog(user_env, "minilm", 300), "DRUGSYNC_EMBEDDER": "minilm"}
    sync_and_verify(env)

    # WHEN a user searches in words that no drug's document uses
    search = drugsync(env, "search", "allergy relief", "-k", "3", "--json")

    # THEN the nearest drug is one for allergies, from the generation the model embedded
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)
    assert hits[0]["generic_name"] in FOR_ALLERGIES, hits
    status = json.loads(drugsync(env, "status", "--json").stdout)
    assert status["generations"]["current"]["embedder"] == "all-minilm-l6-v2-int8-384"

    # AND a shell without the setting is told which embedder to set, in one line, not given lexical hits
    plain = drugsync({k: v for k, v in env.items() if k != "DRUGSYNC_EMBEDDER"}, "search", "allergy relief")
    assert plain.returncode == 2
    assert "embedded by all-minilm-l6-v2-int8-384" in plain.stderr
    assert "Traceback" not in plain.stderr
