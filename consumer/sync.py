"""Sync one range: read its eligible rows, embed them in batches, write documents, mark it done."""

from collections.abc import Sequence

from shared.documents import build_document, build_embedding_text
from shared.models import Drug, RangeMessage, RangeResult
from shared.ports import Catalog, DocumentStore, Embedder, Ledger


def sync_range(
    message: RangeMessage,
    *,
    catalog: Catalog,
    embedder: Embedder,
    store: DocumentStore,
    ledger: Ledger,
    chunk_size: int,
) -> RangeResult:
    """Write every eligible drug of the range, chunk by chunk, then record the range once."""
    drugs = catalog.fetch_range(message.first_id, message.last_id)
    for start in range(0, len(drugs), chunk_size):
        write_chunk(drugs[start : start + chunk_size], embedder, store)
    newly_done = ledger.mark_range_done(message.run_id, message.first_id, len(drugs))
    return RangeResult(
        run_id=message.run_id,
        first_id=message.first_id,
        last_id=message.last_id,
        drugs_written=len(drugs),
        newly_done=newly_done,
    )


def write_chunk(drugs: Sequence[Drug], embedder: Embedder, store: DocumentStore) -> None:
    """One embedding call's worth of drugs, embedded together and written in one pipeline pass."""
    vectors = embedder.embed_texts([build_embedding_text(drug) for drug in drugs])
    documents = [
        (drug.id, build_document(drug, vector, embedder.name))
        for drug, vector in zip(drugs, vectors, strict=True)
    ]
    store.write_documents(documents)
