"""The data-preparation job of a text fine-tune: documents → text → chunks → question/answer pairs.

Runs on a text worker beside the warm vLLM server. With retrieval on, the documents read are
indexed (runner/knowledge/indexing.py) before any question is written; with fine-tuning off, that
is all the job does. Every file is read and chunked first, so one
that yields no text fails early with an error naming it, and its neighbours go on: a document's
own fault (no text, a parser's crash, a limit) is reported for that document, never retried as a
failed job. Reading is bounded (runner/dataprep/documents.py `ReadLimits`): the text kept of one
document, the bytes it may inflate to, and how many documents the runner reads at once
(HELIX_DATAPREP_READERS, over all jobs of the worker process). A cancelled job stops between
pages, paragraphs, sentences and chunks, within a fraction of a second. Then the questions for every fact of every chunk go
to the model at once (vLLM batches them). Each chunk's pairs, filter counts and error are reported
as the chunk completes; chunks listed in `skip_chunks` (done by an earlier attempt) are not redone.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Iterator

import requests

from runner.control_plane.client import Gone
from runner.dataprep.chunking import split_into_chunks, split_into_sentences
from runner.dataprep.documents import DocumentError, ReadLimits, cut, extract_fetched, extract_text
from runner.dataprep.quality import Candidate, balance, filter_candidates
from runner.dataprep.questions import GenerationError, QuestionWriter
from runner.dataprep.url_fetcher import FetchError, UrlFetcher
from runner.job_watch import JobWatch
from runner.knowledge.embedder import NoEmbedder
from runner.knowledge.indexing import IndexTooLarge, index_documents
from runner.jobs import CANCEL_POLL_SECONDS, context, unless_gone
from shared.finetune import DEFAULT_QUESTION_STYLES
from shared.jobs import TextDataPrepJob
from shared.types import DataPrepStage, InteractionState
from shared.wire import ChunkReport, DocumentReport, InteractionUpdate, PreparedReport, QuestionPair

log = logging.getLogger(__name__)
MIN_FACT_WORDS = 4       # shorter "sentences" are headings and captions, nothing to ask about
QUESTIONS_PER_REQUEST = 3


@dataclass
class ChunkWork:
    document: str
    index: int
    facts: list[str]
    ask: list[int]                       # indices of the facts not asked about in an earlier chunk
    candidates: list[Candidate] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pending: int = 0


@functools.lru_cache(maxsize=2)
def _token_counter(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


_readers: threading.BoundedSemaphore | None = None
_readers_lock = threading.Lock()


@contextmanager
def _reading_slot(readers: int, check_stop: Callable[[], None]) -> Iterator[None]:
    """One of the `readers` documents this worker process reads and chunks at once (over all
    its jobs): what data preparation holds in memory is bounded by them and ReadLimits."""
    global _readers
    with _readers_lock:
        if _readers is None:
            _readers = threading.BoundedSemaphore(readers)
    while not _readers.acquire(timeout=CANCEL_POLL_SECONDS):
        check_stop()
    try:
        yield
    finally:
        _readers.release()


def _read_document(ctx, job: TextDataPrepJob, name: str, path: str | None, fetcher: UrlFetcher,
                   limits: ReadLimits) -> tuple[str, str]:
    """(text, error) of one document: its text cut to the limit, and why it was cut."""
    try:
        if path is None:
            text = extract_fetched(name, *fetcher.fetch(name), limits)
        else:
            text = extract_text(name, ctx.client.download(job.session_id, path), fetcher=fetcher, limits=limits)
    except FetchError as err:  # the user's URL: this document's error
        raise DocumentError(err.source, err.reason) from err
    except (DocumentError, Gone, requests.RequestException):
        raise  # a download that failed is the runner's trouble: the job is retried
    except Exception as err:  # a parser's crash (or its memory) is this document's fault alone
        log.warning("reading %s failed", name, exc_info=True)
        raise DocumentError(name, f"could not be read ({type(err).__name__}: {str(err)[:200]})") from err
    if len(text) <= limits.max_chars:
        return text, ""
    return cut(text, limits.max_chars), (
        f"{name}: cut at {limits.max_chars} characters, the limit per document"
        " (HELIX_DATAPREP_MAX_DOCUMENT_CHARS): only its first part was used; split it to use the rest")


def _plan(ctx, job: TextDataPrepJob, check_stop: Callable[[], None]) -> tuple[list[ChunkWork], list[tuple[str, str]]]:
    """Every document read and cut into chunks in the model's tokens, one at a time; a fact
    repeated by the overlap is asked about once. A document that yields no text (or is cut) is
    reported with its error; the others go on. Returns the chunks to ask about and, for the
    retrieval index, each document's text."""
    fetcher = UrlFetcher(allow_private=ctx.config.url_allow_private)
    limits = ReadLimits(ctx.config.dataprep_max_document_chars, ctx.config.dataprep_max_document_bytes, check_stop)
    count = _token_counter(ctx.config.text_model_path or job.model)
    sources = [(PurePosixPath(p).name, p) for p in job.files] + [(u, None) for u in job.urls]
    skip, seen_facts, work, texts = set(job.skip_chunks), set(), [], []
    for n, (name, path) in enumerate(sources):
        ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
            progress=n * 100 // len(sources), status=f"reading document {n + 1} of {len(sources)}"))
        with _reading_slot(ctx.config.dataprep_readers, check_stop):
            try:
                text, error = _read_document(ctx, job, name, path, fetcher, limits)
            except DocumentError as err:
                ctx.client.report(job.session_id, job.interaction_id, "document",
                                  DocumentReport(document=name, error=str(err)[:4000]))
                continue
            # Retrieval alone asks no questions: the index cuts chunks of its own.
            chunks = split_into_chunks(text, count, chunk_tokens=job.chunk_tokens, overlap_tokens=job.overlap_tokens,
                                       check_stop=check_stop) if job.generate_questions else []
        ctx.client.report(job.session_id, job.interaction_id, "document",
                          DocumentReport(document=name, chars=len(text), chunks=len(chunks), error=error or ""))
        if job.index_documents:
            texts.append((name, text))
        for index, chunk in enumerate(chunks):
            check_stop()
            facts = [s for s in split_into_sentences(chunk) if len(s.split()) >= MIN_FACT_WORDS]
            ask = [i for i, f in enumerate(facts) if " ".join(f.lower().split()) not in seen_facts]
            seen_facts.update(" ".join(f.lower().split()) for f in facts)
            if f"{name}#{index}" not in skip:
                work.append(ChunkWork(name, index, facts, ask))
    return work, texts


def _finish_chunk(ctx, job: TextDataPrepJob, chunk: ChunkWork, seen: set[str], lock: threading.Lock) -> int:
    report = ChunkReport(document=chunk.document, index=chunk.index)
    if chunk.errors and not chunk.candidates:
        report.error = chunk.errors[0][:4000]
    elif not chunk.ask:
        report.note = ("every sentence was asked about in the chunk before" if chunk.facts
                       else "no sentences to ask about")
    else:
        with lock:  # one `seen` set: a question repeated in another chunk is a duplicate there
            accepted, dropped = filter_candidates(chunk.candidates, chunk.facts, seen)
        kept, coverage = balance(accepted, chunk.facts, job.questions_per_fact)
        dropped["over_cap"] = coverage["over_cap"]
        report.dropped = dropped
        report.coverage = {k: v for k, v in coverage.items() if k != "over_cap"}
        report.pairs = [QuestionPair(question=c.question, answer=c.answer, style=c.style,
                                     fact=f"{chunk.document}#{chunk.index}#{c.fact_index}") for c in kept]
        if not kept:
            report.error = ("no question survived the filters: "
                            + ", ".join(f"{k} {v}" for k, v in dropped.items() if v))
    ctx.client.report(job.session_id, job.interaction_id, "chunk", report)
    return len(report.pairs)


@unless_gone
def prepare_text(payload: dict[str, Any]) -> dict[str, Any]:
    from rq import get_current_job

    # Cancelled (its job gone from Redis): reading, chunking and question writing all stop.
    with JobWatch(get_current_job(), math.inf, interval=CANCEL_POLL_SECONDS) as watch:
        try:
            return _prepare_text(payload, watch)
        except Gone:  # seen by the watch, or by a report that found the interaction cancelled
            log.info("data preparation of %s stopped: its job was cancelled or taken over",
                     payload.get("interaction_id"))
            raise


def _prepare_text(payload: dict[str, Any], watch: JobWatch) -> dict[str, Any]:
    ctx = context()
    job = TextDataPrepJob.from_dict(payload)
    started = time.monotonic()
    n_docs = len(job.files) + len(job.urls)
    ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
        data_prep_stage=DataPrepStage.EXTRACT_TEXT.value, progress=0, status=f"reading {n_docs} documents"))

    def check_stop() -> None:
        if watch.stop.is_set():
            raise Gone(job.interaction_id)

    work, texts = _plan(ctx, job, check_stop)
    if job.index_documents:
        try:
            index_documents(ctx, job, texts, check_stop)
        except (IndexTooLarge, NoEmbedder) as err:  # the job cannot succeed here: said, not retried
            ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
                state=InteractionState.ERROR.value, status="failed", error=str(err)))
            return {"error": str(err)}
    if not job.generate_questions:  # retrieval only: no questions to write, nothing to train
        ctx.client.report(job.session_id, job.interaction_id, "prepared", PreparedReport())
        return {"documents": len(texts), "seconds": round(time.monotonic() - started, 1)}

    ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
        data_prep_stage=DataPrepStage.GENERATE_QUESTIONS.value, progress=0,
        status=f"writing questions for {len(work)} chunks"))
    writer = QuestionWriter(ctx.config.qa_api_url or ctx.vllm_url, ctx.config.qa_model or job.model,
                            ctx.config.qa_api_key)
    styles = job.question_styles or list(DEFAULT_QUESTION_STYLES)
    asks = [(chunk, i, style) for chunk in work for i in chunk.ask for style in styles]
    for chunk, _, _ in asks:
        chunk.pending += 1
    seen, lock, done, pairs = set(), threading.Lock(), 0, 0
    for chunk in [c for c in work if not c.pending]:
        pairs += _finish_chunk(ctx, job, chunk, seen, lock)
        done += 1

    def ask(chunk: ChunkWork, i: int, style: str) -> tuple[ChunkWork, list[Candidate], str]:
        context_text = " ".join(chunk.facts[max(0, i - 1):i + 1])
        try:
            questions = writer.write(chunk.facts[i], context_text, chunk.document, style, QUESTIONS_PER_REQUEST)
            return chunk, [Candidate(q, chunk.facts[i], i, style) for q in questions], ""
        except GenerationError as err:
            return chunk, [], str(err)

    pool = ThreadPoolExecutor(max(1, ctx.config.qa_concurrency))
    # Cancelled: no further question is asked and the job ends within a fraction of a second;
    # the requests already sent end on their own (short, bounded replies).
    stopped = False
    try:
        pending = {pool.submit(ask, *r) for r in asks}
        while pending:
            finished, pending = wait(pending, timeout=CANCEL_POLL_SECONDS, return_when=FIRST_COMPLETED)
            check_stop()
            for future in finished:
                chunk, candidates, error = future.result()
                chunk.candidates += candidates
                if error:
                    chunk.errors.append(error)
                chunk.pending -= 1
                if chunk.pending == 0:
                    pairs += _finish_chunk(ctx, job, chunk, seen, lock)
                    done += 1
                    ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
                        progress=min(99, done * 100 // max(1, len(work))),
                        status=f"questions written for {done} of {len(work)} chunks ({pairs} pairs so far)"))
    except Gone:
        stopped = True
        raise
    finally:
        pool.shutdown(wait=not stopped, cancel_futures=True)
    ctx.client.report(job.session_id, job.interaction_id, "prepared", PreparedReport(**writer.usage))
    return {"chunks": len(work), "pairs": pairs, "seconds": round(time.monotonic() - started, 1)}
