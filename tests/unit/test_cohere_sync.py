"""A range synced with Cohere Embed: 96 drugs a request, and one text the model refuses fails its row
alone (ledger, DLQ) while every other drug is written, none embedded twice outside the refused request."""

import boto3

from shared.documents import build_embedding_text
from shared.embedders.cohere import CohereEmbedder
from shared.models import RowsMessage
from tests.unit.test_cohere import FakeCohere
from tests.unit.test_sync_range import RUN, World


def test_one_text_cohere_refuses_among_256_fails_its_row_alone() -> None:
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    world = World(count=256, chunk_size=256)
    bad = build_embedding_text(world.catalog.fetch_range(100, 100).drugs[0])
    fake = FakeCohere(client, bad={bad})
    world.env.embedder = CohereEmbedder(
        client, "cohere.embed-english-v3", 1024, batch_size=256, concurrency=1
    )

    outcome = world.run()

    assert outcome.failed_ids == (100,)
    assert set(world.store.documents) == set(range(1, 257)) - {100}
    dead = [RowsMessage.model_validate_json(body) for body in world.dead_letters.bodies]
    assert [message.ids for message in dead] == [[100]]
    assert dead[0].error_class == "EmbeddingError"
    assert "maxLength" in (dead[0].error or "")
    assert world.ledger.done == {(RUN, 1): 255}
    # 3 requests of 96/96/64 texts; the refused one's halves add at most 2*ceil(log2 96) requests and,
    # level by level, at most twice its 96 texts again (measured: 15 requests, 445 texts; Titan: 256).
    assert len(fake.requests) <= 3 + 2 * 7
    assert sum(len(request) for request in fake.requests) <= 256 + 2 * 96
    assert [len(request) for request in fake.requests if bad not in request].count(64) == 1
