"""The runner's job entry points: the only functions a runner worker executes.

Each takes one JSON payload (shared.jobs), reports progress to the control plane while it
works and ends with a final update. A model-side refusal becomes an error the user can read;
an infrastructure failure raises, so RQ retries the job.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests

from runner.config import IMAGE_ADAPTERS, RunnerConfig
from runner.control_plane.client import ControlPlane, Gone
from runner.control_plane.http_session import pooled_session
from runner.job_watch import JobWatch
from runner.knowledge import retrieval
from runner.knowledge.embedder import NoEmbedder
from runner.state import metrics
from runner.text import adapters, engine_crashes
from runner.text.fair_batch import FairBatch
from runner.text.generation import EngineFailure, Generation, ModelError, Reply, fit_history, stream_chat, vllm_client
from runner.text.resumable import reply_in_turns
from runner.text.stream import TextStream, clear_partial_text
from runner.text.vllm_server import cpu_engine, healthy, wait_healthy
from shared.jobs import ImageInferenceJob, TextInferenceJob, WorkKind
from shared.knowledge import Way
from shared.types import InteractionState
from shared.wire import InteractionUpdate

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    kind: WorkKind
    config: RunnerConfig
    client: ControlPlane
    vllm_url: str = ""
    image_pipeline: Any = None
    image_budget: Any = None  # shared.image_budget.ImageBudget: what this runner's pipeline can do
    image_adapters: Any = None  # runner.images.adapters.ImageAdapters on the warm pipeline
    http: requests.Session | None = None  # vLLM's token counts and adapter loads
    vllm_stream: httpx.Client | None = None  # vLLM's streamed replies (runner/text/generation.py)
    redis: Any = None  # streamed text goes to clients through it
    fair_batch: FairBatch = field(default_factory=lambda: FairBatch(0))  # the replies streaming, by owner


_context: WorkerContext | None = None


def init_context(kind: WorkKind, config: RunnerConfig, client: ControlPlane, vllm_url: str = "",
                 pool_size: int = 1, redis: Any = None) -> WorkerContext:
    """Called once per worker process (shared by its threads); loads the image pipeline there
    so it stays warm."""
    global _context
    _context = WorkerContext(kind, config, client, vllm_url, http=pooled_session(pool_size),
                             vllm_stream=vllm_client(pool_size), redis=redis)
    if kind == WorkKind.TEXT_INFERENCE:
        width = config.shared_batch_width
        _context.fair_batch = FairBatch(width if width >= 0 else SHARED_BATCH_WIDTH_ON_CPU * cpu_engine())
    if kind == WorkKind.IMAGE_INFERENCE:
        from runner.images.pipeline import ImagePipeline

        started = time.monotonic()
        _context.image_pipeline = ImagePipeline(config.image_model_path)
        metrics.MODEL_LOADS.labels("image").inc()
        from runner.images.adapters import ImageAdapters

        _context.image_adapters = ImageAdapters(_context.image_pipeline.pipe, Path(config.work_dir) / IMAGE_ADAPTERS)
        log.info("image pipeline %s loaded in %.1fs (load #%d in this process)", config.image_model,
                 time.monotonic() - started, ImagePipeline.load_count)
        from runner.images import calibration as image_calibration

        _context.image_budget = image_calibration.calibrate(_context.image_pipeline, config)
        image_calibration.save(config, _context.image_budget)
        log.info("image budget: %s", _context.image_budget)
    return _context


def context() -> WorkerContext:
    if _context is None:
        raise RuntimeError("runner job executed outside a runner worker")
    return _context


def start_attempt(ctx: WorkerContext, session_id: str, interaction_id: str, status: str) -> None:
    """The first update of an attempt clears what an earlier, interrupted attempt streamed."""
    ctx.client.update(session_id, interaction_id, InteractionUpdate(
        message="", progress=0, status=status, state=InteractionState.WAITING.value))


def unless_gone(job_function):
    """A job whose interaction is gone (deleted, or finished by an earlier attempt) stops at the
    next report instead of generating for nobody; closing vLLM's stream aborts the request."""

    @functools.wraps(job_function)
    def wrapper(payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return job_function(payload)
        except Gone as gone:
            log.info("interaction %s was deleted or already finished; skipped", gone)
            return {"skipped": str(gone)}

    return wrapper


@unless_gone
def text_inference(payload: dict[str, Any]) -> dict[str, Any]:
    from rq import get_current_job

    with JobWatch(get_current_job(), math.inf, interval=CANCEL_POLL_SECONDS) as watch:
        return _text_inference(payload, watch)


# How often a running job looks whether it was cancelled: one small Redis read each time.
CANCEL_POLL_SECONDS = 0.25
# The batch a light user's chat shares with others on a CPU (runner/text/fair_batch.py). With the
# default model on 2 cores, a 64-token reply took 1.1-1.2 times as long in a batch of 4 as alone,
# 2-2.4 times in one of 8 and about 10 times in one of 64.
SHARED_BATCH_WIDTH_ON_CPU = 4
PAUSED_STATUS = "paused while another user's chat runs (fair share of this runner)"


def _text_inference(payload: dict[str, Any], watch: JobWatch) -> dict[str, Any]:
    ctx = context()
    job = TextInferenceJob.from_dict(payload)
    started = time.monotonic()
    max_tokens = job.max_tokens or ctx.config.max_tokens
    try:
        asked, cited = _with_knowledge(ctx, job)
    except NoEmbedder as err:
        ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
            state=InteractionState.ERROR.value, error=str(err), status="error"))
        return {"error": str(err)}
    messages = asked
    # Crashes of vLLM this request was in flight for, by this attempt or an earlier one; read
    # once, then kept here (a reply costs no more Redis round trips unless it meets a crash).
    crashes = engine_crashes.strikes(ctx.redis, job.interaction_id)
    pauses = 0  # times the reply paused to share the batch (runner/text/fair_batch.py)
    for attempt in range(1, 4):
        # A request that was in flight when vLLM's engine crashed waits its turn: one such
        # suspect at a time, so a crash it causes again is its own (runner/text/engine_crashes.py).
        suspect = crashes > 0
        turn = (engine_crashes.suspect_turn(ctx.redis, ctx.config.runner_id, watch.stop) if suspect
                else contextlib.nullcontext(True))
        with turn as my_turn:
            if not my_turn:
                raise Gone(job.interaction_id)
            clear_partial_text(ctx.redis, job.interaction_id)
            start_attempt(ctx, job.session_id, job.interaction_id,
                          "generating again after the model server crashed" if suspect else "generating")
            stream = TextStream(ctx.client, ctx.redis, job.session_id, job.interaction_id,
                                ctx.config.delta_interval, ctx.config.persist_interval)
            generation = Generation()
            taken = threading.Event()  # vLLM answered the request: it was in flight

            def open_segment(so_far: str, tokens_left: int, part: Generation, on_response):
                def on_vllm_response(response: Reply) -> None:
                    taken.set()
                    on_response(response)

                send, prompt, extra = messages, job.prompt, {**ctx.config.sampling_extra, **job.sampling}
                if so_far and job.prompt is not None:
                    prompt = job.prompt + so_far
                elif so_far:  # the reply so far, as the start of the assistant's message
                    send = [*messages, {"role": "assistant", "content": so_far}]
                    extra.update(add_generation_prompt=False, continue_final_message=True)
                return stream_chat(ctx.vllm_url, model, send, max_tokens=tokens_left, temperature=job.temperature,
                                   extra=extra, session=ctx.vllm_stream, prompt=prompt, generation=part,
                                   continuous_usage=job.pausable(), on_response=on_vllm_response)

            def on_pause(paused: bool) -> None:
                stream.publish()
                if paused:
                    metrics.REPLY_PAUSES.inc()
                ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
                    status=PAUSED_STATUS if paused else "generating"))

            try:
                if job.prompt is None:
                    messages = fit_history(ctx.vllm_url, job.model, asked, max_tokens, session=ctx.http)
                # A fine-tuned session: the same warm base model, with its adapter by name.
                model = adapters.ensure(ctx.client, ctx.vllm_url, job.session_id, job.lora_dir,
                                        adapters.cache_dir(ctx.config.work_dir), ctx.http) if job.lora_dir else job.model
                # Cancelled (its job gone from Redis): vLLM's request is aborted and the job ends now.
                ticket = ctx.fair_batch.join(job.owner_tag, job.pausable())
                try:
                    for delta in reply_in_turns(ticket, watch, open_segment, generation, max_tokens, on_pause):
                        stream.add(delta)
                finally:
                    ctx.fair_batch.leave(ticket)
                    pauses += ticket.pauses
                if watch.stop.is_set():
                    raise Gone(job.interaction_id)
                stream.publish()
                break
            except (ModelError, adapters.AdapterError) as err:
                if crashes:
                    engine_crashes.forget(ctx.redis, job.interaction_id)
                ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
                    state=InteractionState.ERROR.value, message=stream.text, error=str(err),
                    status="error", metadata={"refused_by_model": True}))
                return {"error": str(err)}
            except EngineFailure as err:
                failure, in_flight = err, err.in_flight
            # vLLM unreachable, or its connection dropped mid-reply (it died): requests' errors from
            # fit_history and the adapter's load, httpx's from the streamed reply.
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, httpx.TransportError) as err:
                if isinstance(err, httpx.ReadTimeout) and not taken.is_set():
                    raise  # no answer at all within the read timeout: RQ retries the job, as on requests' ReadTimeout
                failure, in_flight = err, taken.is_set()
        if watch.stop.is_set():
            raise Gone(job.interaction_id) from None
        if isinstance(failure, EngineFailure) and in_flight and healthy(ctx.vllm_url):
            # vLLM failed this request but its engine lives (a grammar that rejected every
            # token, say): not a crash, so no strike; tried once more, then the server's error.
            log.warning("vLLM failed %s without crashing (%s)", job.interaction_id, failure)
            if attempt >= 2:
                if crashes:
                    engine_crashes.forget(ctx.redis, job.interaction_id)
                ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
                    state=InteractionState.ERROR.value, message=stream.text, status="error",
                    error=f"the model server failed on this request twice: {failure}"))
                return {"error": str(failure)}
            continue
        if in_flight:
            crashes = engine_crashes.strike(ctx.redis, job.interaction_id)
            if crashes >= engine_crashes.STRIKES_TO_FAIL:
                log.error("%s was in flight at %d crashes of vLLM, the last as the only suspect: failed (%s)",
                          job.interaction_id, crashes, failure)
                engine_crashes.forget(ctx.redis, job.interaction_id)
                ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
                    state=InteractionState.ERROR.value, message=stream.text, error=engine_crashes.CRASH_ERROR,
                    status="error", metadata={"engine_crashes": crashes}))
                return {"error": engine_crashes.CRASH_ERROR}
        if attempt == 3:
            raise failure  # RQ retries the job; the reconciler ends it if that fails too
        # The supervisor restarts a vLLM that died: wait for it, then start over.
        log.warning("vLLM failed during %s (%s); waiting for it", job.interaction_id, failure)
        ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
            status="the model server crashed: waiting for it to try again" if in_flight
            else "the model server is restarting: waiting for it"))
        wait_healthy(ctx.vllm_url, timeout=300)
    if crashes:
        engine_crashes.forget(ctx.redis, job.interaction_id)
    elapsed = time.monotonic() - started
    _count_tokens(job.model, generation.usage, elapsed)
    choices = [{"index": i, "text": generation.texts.get(i, ""), "finish_reason": generation.finish_reasons.get(i)}
               for i in sorted(set(generation.texts) | set(generation.finish_reasons))]
    ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
        state=InteractionState.COMPLETE.value, message=stream.text, progress=100,
        status="complete", metadata={"generation_seconds": round(elapsed, 3),
                                     "history_messages_dropped": len(asked) - len(messages),
                                     **cited,
                                     "usage": generation.usage,
                                     "finish_reason": generation.finish_reasons.get(0, "stop"),
                                     **({"choices": choices} if len(choices) > 1 else {}),
                                     **({"engine_crashes": crashes} if crashes else {}),
                                     **({"pauses": pauses} if pauses else {}),
                                     **({"adapter": model} if job.lora_dir else {})}))
    clear_partial_text(ctx.redis, job.interaction_id)  # the stored message holds it all now
    return {"chars": len(stream.text), "seconds": elapsed}


def _with_knowledge(ctx: WorkerContext, job: TextInferenceJob) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The chat as the model gets it, with the excerpts retrieval found for its last message in a
    session that learns from documents by retrieval; and what the reply's metadata tells of them."""
    if not job.knowledge_way:
        return job.messages, {}
    way = Way(job.knowledge_way)
    if not way.retrieves or job.prompt is not None or not job.messages:
        return job.messages, {"knowledge_way": way.value}
    started = time.monotonic()
    found = retrieval.search(ctx, job.session_id, job.interaction_id, [job.messages[-1]["content"]])[0]
    log.debug("retrieval for %s found %d chunks in %.3fs", job.interaction_id, len(found), time.monotonic() - started)
    return retrieval.with_excerpts(job.messages, found), {"knowledge_way": way.value,
                                                           "citations": retrieval.citations(found)}


def _count_tokens(model: str, usage: dict | None, seconds: float) -> None:
    tokens = (usage or {}).get("completion_tokens")
    if isinstance(tokens, int) and tokens > 0:
        metrics.TOKENS.labels(model).inc(tokens)
        if seconds > 0:
            metrics.TOKENS_PER_SECOND.labels(model).observe(tokens / seconds)


@unless_gone
def image_inference(payload: dict[str, Any]) -> dict[str, Any]:
    from rq import get_current_job

    from runner.images.interruption import Interrupted, interruptible
    from runner.images.pipeline import ImagePipeline
    from runner.job_watch import GONE, JobWatch

    ctx = context()
    job = ImageInferenceJob.from_dict(payload)
    budget = ctx.image_budget
    # A job queued before this runner announced its budget (or by a control plane that did not
    # look) is held to it here: no request keeps the one image worker for hours.
    refusal = budget.refusal(job.model, job.width, job.height, job.steps, job.num_images)
    if refusal:
        ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
            state=InteractionState.ERROR.value, error=refusal, status="error"))
        return {"error": refusal}
    width, height, steps = budget.resolve(job.width, job.height, job.steps)
    deadline = budget.runner_deadline(width, height, steps, job.num_images)
    start_attempt(ctx, job.session_id, job.interaction_id, "generating image")
    last_sent = [0.0]

    def on_step(step: int, total: int) -> None:
        # Throttled: progress is best effort, the final update is what counts.
        if step < total and time.monotonic() - last_sent[0] < 0.2:
            return
        last_sent[0] = time.monotonic()
        ctx.client.update(job.session_id, job.interaction_id, InteractionUpdate(
            progress=min(99, int(step * 100 / total)), status=f"step {step}/{total}"))

    started = time.monotonic()
    try:
        # A fine-tuned session's adapter, on the warm pipeline and for this job only; deleting
        # the session stops the job within a fraction of a second, mid-step.
        with ctx.image_adapters.applied(ctx.client, job.session_id, job.lora_dir) as adapter, \
                JobWatch(get_current_job(), deadline) as watch, interruptible(ctx.image_pipeline.pipe, watch.stop):
            images = ctx.image_pipeline.generate(
                job.prompt, num_images=job.num_images, width=job.width, height=job.height,
                steps=job.steps, guidance=job.guidance, seed=job.seed, on_step=on_step)
    except ValueError as err:  # parameters this pipeline cannot take (e.g. size not a multiple)
        ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
            state=InteractionState.ERROR.value, error=str(err), status="error"))
        return {"error": str(err)}
    except Interrupted:
        stopped = time.monotonic() - started
        if watch.reason == GONE:
            log.info("image job of %s stopped after %.2fs", job.interaction_id, stopped)
            raise Gone(job.interaction_id) from None
        expected = budget.seconds(width, height, steps, job.num_images)
        error = (f"stopped after {stopped:.0f} s: this request should take about {expected:.0f} s on this"
                 " runner, which is overloaded; try again, or ask for fewer steps, fewer images or a smaller size")
        ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
            state=InteractionState.ERROR.value, error=error, status="error"))
        return {"error": error}
    files = []
    for n, image in enumerate(images):
        png = io.BytesIO()
        image.save(png, format="PNG")
        files.append(ctx.client.upload_result(job.session_id, job.interaction_id,
                                              f"image-{n}.png", png.getvalue()))
    ctx.client.finish(job.session_id, job.interaction_id, InteractionUpdate(
        state=InteractionState.COMPLETE.value, message="", files=files, progress=100,
        status="complete", metadata={"generation_seconds": round(time.monotonic() - started, 3),
                                     "pipeline_loads": ImagePipeline.load_count,
                                     "width": width, "height": height, "steps": steps,
                                     "seed": job.seed, **({"adapter": adapter} if adapter else {})}))
    return {"files": files}
