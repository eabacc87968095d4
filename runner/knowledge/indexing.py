"""The `index_documents` stage of a text fine-tune with retrieval: every document read is cut into
chunks of the embedding model's tokens, embedded, and sent to the control plane in batches; the
`indexed` report at the end makes the index searchable, so a runner that dies half-way leaves
nothing a chat would find half-made (the retried job indexes every document again). An index of
more chunks than the job allows is refused before anything is embedded."""
from __future__ import annotations

import time
from typing import Callable

from runner.dataprep.chunking import split_into_chunks
from runner.knowledge.embedder import embed, shared_embedder
from shared.jobs import TextDataPrepJob
from shared.knowledge import INDEX_CHUNK_TOKENS, INDEX_OVERLAP_TOKENS
from shared.types import DataPrepStage
from shared.wire import IndexedChunk, IndexedReport, IndexReport, InteractionUpdate

BATCH = 64  # chunks embedded and sent at once


class IndexTooLarge(Exception):
    """The documents make more chunks than the session's index may hold."""


def index_documents(ctx, job: TextDataPrepJob, texts: list[tuple[str, str]],
                    check_stop: Callable[[], None]) -> IndexedReport:
    """Indexes `texts` ((document name, text) each) for the job's session; returns the final report."""
    started = time.monotonic()
    model_dir = ctx.config.embedding_model_path
    tokenizer = shared_embedder(model_dir).tokenizer

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
        data_prep_stage=DataPrepStage.INDEX_DOCUMENTS.value, progress=0,
        status=f"cutting {len(texts)} documents into chunks for retrieval"))
    chunked = [(name, split_into_chunks(text, count, chunk_tokens=INDEX_CHUNK_TOKENS,
                                        overlap_tokens=INDEX_OVERLAP_TOKENS, check_stop=check_stop))
               for name, text in texts]
    total = sum(len(chunks) for _, chunks in chunked)
    if total > job.max_index_chunks:
        raise IndexTooLarge(f"the documents make {total} chunks for retrieval; this session's index may hold"
                            f" {job.max_index_chunks} (HELIX_MAX_INDEX_CHUNKS, or what is left of your plan's"
                            " index_chunks): send fewer or shorter documents, or fine-tune without retrieval"
                            " (rag_enabled=no)")
    done = 0
    for name, chunks in chunked:
        for start in range(0, len(chunks), BATCH):
            check_stop()
            batch = chunks[start:start + BATCH]
            vectors = embed(model_dir, batch)
            ctx.client.report(job.session_id, job.interaction_id, "index", IndexReport(
                document=name, first=start == 0,
                chunks=[IndexedChunk(index=start + i, text=text, embedding=vector)
                        for i, (text, vector) in enumerate(zip(batch, vectors))]))
            done += len(batch)
            ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
                progress=min(99, done * 100 // max(1, total)),
                status=f"indexed {done} of {total} chunks for retrieval"))
    report = IndexedReport(documents=len(texts), chunks=total, seconds=round(time.monotonic() - started, 3))
    ctx.client.report(job.session_id, job.interaction_id, "indexed", report)
    return report
