"""Turns an unfinished system interaction into an RQ job on the queue of its kind and model.

The payload is built from PostgreSQL alone, so the request handler and the reconciler (which
re-queues work Redis lost or a dead runner dropped) build exactly the same job.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from controlplane.config import Config
from controlplane.knowledge import ways
from controlplane.storage.rows import InteractionRow, SessionRow
from shared.finetune import DEFAULT_EVAL_SHARE
from shared.jobs import (
    ENTRY_POINTS,
    ImageFinetuneJob,
    ImageInferenceJob,
    TextDataPrepJob,
    TextFinetuneJob,
    TextInferenceJob,
    WorkKind,
    job_id_for,
    queue_name,
)
from shared.memory import JOB_META_KEY, need_of
from shared.types import Creator, DataPrepStage, InteractionState, SessionMode, SessionType

log = logging.getLogger(__name__)


def chat_history(interactions: list[InteractionRow], upto_id: str) -> list[dict[str, str]]:
    """The messages before the system interaction `upto_id`, in the roles a chat model expects.

    A turn whose reply failed is left out whole, so user and assistant still alternate (many
    chat templates refuse anything else) and the model never sees a question without answer.
    """
    messages: list[dict[str, str]] = []
    pending_user: dict[str, str] | None = None
    for i in interactions:
        if i.mode == SessionMode.FINETUNE:
            continue  # the documents and the training run are not part of the conversation
        if i.creator == Creator.USER:
            pending_user = {"role": "user", "content": i.message}
        elif i.id == upto_id:
            break
        elif pending_user and i.state == InteractionState.COMPLETE and i.message:
            messages += [pending_user, {"role": "assistant", "content": i.message}]
            pending_user = None
        else:
            pending_user = None
    if pending_user:
        messages.append(pending_user)
    return messages


def job_stage(interaction: InteractionRow) -> str:
    """Which job an unfinished interaction needs: a fine-tune has two in turn, each its own id."""
    return stage_of(interaction.mode, interaction.data_prep_stage)


def stage_of(mode: str, data_prep_stage: str | None) -> str:
    """job_stage from an interaction's two columns."""
    if mode != SessionMode.FINETUNE:
        return ""
    return "finetune" if data_prep_stage == DataPrepStage.FINETUNE else "dataprep"


def _running_worker(status: bytes | None, worker: bytes | None) -> str:
    """From a job hash's `status` and `worker_name`: the worker running it, or ""."""
    return worker.decode() if status == JobStatus.STARTED.value.encode() and worker else ""


def _user_turn_before(interactions: list[InteractionRow], interaction: InteractionRow) -> InteractionRow | None:
    """The user's turn just before a system interaction: the documents or images it works on."""
    before = interactions[:next(n for n, i in enumerate(interactions) if i.id == interaction.id)]
    return next((i for i in reversed(before) if i.creator == Creator.USER), None)


def _sent_with(interactions: list[InteractionRow], interaction: InteractionRow) -> tuple[list[str], dict[str, Any]]:
    """The files and metadata of the user's turn before a system interaction (none if no turn)."""
    turn = _user_turn_before(interactions, interaction)
    return (turn.files, turn.metadata) if turn else ([], {})


def _image_finetune_job(session: SessionRow, interactions: list[InteractionRow],
                        interaction: InteractionRow) -> tuple[WorkKind, dict[str, Any]]:
    files, metadata = _sent_with(interactions, interaction)
    captions = metadata.get("captions", {})
    job = ImageFinetuneJob(
        session_id=session.id, interaction_id=interaction.id, model=session.model_name,
        images=[{"path": p, "caption": captions.get(p.rsplit("/", 1)[-1], "")} for p in files],
        hyperparameters=session.config.get("finetune", {}).get("hyperparameters", {}),
        checkpoint=interaction.metadata.get("checkpoint", {}).get("path", ""))
    return WorkKind.IMAGE_FINETUNE, job.to_dict()


def _finetune_job(session: SessionRow, interactions: list[InteractionRow],
                  interaction: InteractionRow) -> tuple[WorkKind, dict[str, Any]]:
    if session.type == SessionType.IMAGE:
        return _image_finetune_job(session, interactions, interaction)
    options = session.config.get("finetune", {})
    common = {"session_id": session.id, "interaction_id": interaction.id, "model": session.model_name}
    if job_stage(interaction) == "finetune":
        job = TextFinetuneJob(**common, system_prompt=options.get("system_prompt", ""),
                              hyperparameters=options.get("hyperparameters", {}),
                              eval_share=options.get("eval_share", DEFAULT_EVAL_SHARE),
                              checkpoint=interaction.metadata.get("checkpoint", {}).get("path", ""),
                              seed=options.get("seed", 0), knowledge_report=bool(session.config.get("knowledge")))
        return WorkKind.TEXT_FINETUNE, job.to_dict()
    files, metadata = _sent_with(interactions, interaction)
    done = [f"{name}#{chunk['index']}" for name, report in interaction.data_prep_chunks.items()
            for chunk in report.get("chunks", []) if chunk.get("state") == "done"]
    learning = options.get("knowledge", {})
    job = TextDataPrepJob(**common, files=files, urls=metadata.get("urls", []),
                          question_styles=options.get("question_styles", []),
                          questions_per_fact=options.get("questions_per_fact", 4),
                          chunk_tokens=options.get("chunk_tokens", 384),
                          overlap_tokens=options.get("overlap_tokens", 48), skip_chunks=done,
                          # An index made whole by an earlier attempt is not made again by a retry.
                          index_documents=bool(learning.get("retrieval"))
                          and not interaction.metadata.get("knowledge", {}).get("chunks"),
                          generate_questions=learning.get("finetune", True),
                          max_index_chunks=options.get("max_index_chunks", TextDataPrepJob.max_index_chunks))
    return WorkKind.TEXT_DATAPREP, job.to_dict()


def owner_tag(owner: str) -> str:
    """The owner as runners see it: enough to share a batch fairly, not who they are."""
    return hashlib.sha256(f"owner:{owner}".encode()).hexdigest()[:16]


def build_job(session: SessionRow, interactions: list[InteractionRow],
              interaction_id: str) -> tuple[WorkKind, dict[str, Any]]:
    interaction = next(i for i in interactions if i.id == interaction_id)
    if interaction.mode == SessionMode.FINETUNE:
        return _finetune_job(session, interactions, interaction)
    if session.type == SessionType.IMAGE:
        prompt = chat_history(interactions, interaction_id)[-1]["content"]
        # The session's settings, overridden by those sent with this prompt (a PUT's fields).
        params = {**session.config.get("image", {}), **_sent_with(interactions, interaction)[1].get("image", {})}
        job = ImageInferenceJob(session_id=session.id, interaction_id=interaction_id,
                                model=session.model_name, prompt=prompt,
                                lora_dir=session.lora_dir, **params)
        return WorkKind.IMAGE_INFERENCE, job.to_dict()
    text = session.config.get("text", {})
    messages = chat_history(interactions, interaction_id)
    lora_dir, way = ways.adapter_and_way(session)
    # The caller's own system prompt; else a fine-tuned session is served as it was trained.
    system_prompt = text.get("system_prompt") or (
        session.config.get("finetune", {}).get("system_prompt") if lora_dir else "")
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    job = TextInferenceJob(session_id=session.id, interaction_id=interaction_id,
                           model=session.model_name, messages=messages, lora_dir=lora_dir, knowledge_way=way,
                           max_tokens=text.get("max_tokens"), temperature=text.get("temperature"),
                           sampling=text.get("sampling", {}),
                           prompt=messages[-1]["content"] if text.get("completion") else None,
                           owner_tag=owner_tag(session.owner))
    return WorkKind.TEXT_INFERENCE, job.to_dict()


class Dispatcher:
    def __init__(self, redis: Redis, config: Config):
        self.redis = redis
        self.config = config

    def _timeout(self, kind: WorkKind, session: SessionRow, interactions: list[InteractionRow],
                 interaction_id: str) -> int:
        if kind == WorkKind.IMAGE_INFERENCE:
            # Sized from the request's work and the runners' budget: a continuation's own (its
            # fields may ask for more than the first prompt did), else the session's.
            sized = _sent_with(interactions, next(i for i in interactions if i.id == interaction_id))[1]
            if "job_timeout" not in sized:
                sized = session.config
            if sized.get("job_timeout"):
                return int(sized["job_timeout"])
        return {WorkKind.IMAGE_INFERENCE: self.config.image_job_timeout,
                WorkKind.TEXT_DATAPREP: self.config.dataprep_job_timeout,
                WorkKind.TEXT_FINETUNE: self.config.finetune_job_timeout,
                WorkKind.IMAGE_FINETUNE: self.config.finetune_job_timeout}.get(kind, self.config.text_job_timeout)

    def enqueue(self, session: SessionRow, interactions: list[InteractionRow], interaction_id: str) -> Job:
        kind, payload = build_job(session, interactions, interaction_id)
        queue = Queue(queue_name(kind, session.model_name), connection=self.redis,
                      serializer=JSONSerializer)
        stage = job_stage(next(i for i in interactions if i.id == interaction_id))
        job_id = job_id_for(interaction_id, stage)
        existing = self.fetch(interaction_id, stage)
        if existing is not None:
            existing.delete()  # a dead runner's copy: drop it from every registry first
        job = queue.enqueue_call(
            ENTRY_POINTS[kind], args=(payload,), job_id=job_id,
            timeout=self._timeout(kind, session, interactions, interaction_id),
            result_ttl=3600, failure_ttl=24 * 3600, retry=Retry(max=2),
            # The runner holds the job to the need the control plane checked the fleet against.
            meta={JOB_META_KEY: need_of(self.config.memory_needs, session.model_name, kind)},
        )
        # Ties the request (its request_id, in the log context) to the interaction and its job.
        log.info("queued job %s on %s", job_id, queue.name,
                 extra={"session_id": session.id, "interaction_id": interaction_id, "job_id": job_id})
        return job

    def try_enqueue(self, session: SessionRow, interactions: list[InteractionRow],
                    interaction_id: str) -> bool:
        """Enqueue after the session is committed; if Redis is away the reconciler will do it."""
        try:
            self.enqueue(session, interactions, interaction_id)
            return True
        except Exception:  # redis errors of every kind: the row in PostgreSQL is what counts
            log.warning("could not enqueue interaction %s; the reconciler will retry", interaction_id,
                        exc_info=True)
            return False

    def fetch(self, interaction_id: str, stage: str = "") -> Job | None:
        try:
            return Job.fetch(job_id_for(interaction_id, stage), connection=self.redis,
                             serializer=JSONSerializer)
        except Exception:  # NoSuchJobError, or a job hash left unreadable
            return None

    def listed(self, job: Job) -> bool:
        """Whether a queued job is still on its queue (or in RQ's intermediate list of a worker
        taking it, which RQ itself cleans up). A queued job on neither was taken by a worker that
        never started it: one paused or cut off from Redis in mid-dequeue."""
        queue = Queue(job.origin, connection=self.redis)
        return any(self.redis.lpos(key, job.id) is not None
                   for key in (queue.key, IntermediateQueue.get_intermediate_queue_key(queue.key)))

    def holder(self, interaction_id: str, stage: str = "") -> str:
        """The name of the worker running the interaction's job now ("" when it is not running):
        two fields of the job's hash, not the whole job with its payload (a chat's history)."""
        key = Job.key_for(job_id_for(interaction_id, stage))
        return _running_worker(*self.redis.hmget(key, "status", "worker_name"))

    def holders(self, jobs: list[tuple[str, str]]) -> list[str]:
        """holder() of each (interaction id, stage), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for interaction_id, stage in jobs:
                pipe.hmget(Job.key_for(job_id_for(interaction_id, stage)), "status", "worker_name")
            return [_running_worker(status, worker) for status, worker in pipe.execute()]

    def cancel(self, interaction_id: str) -> None:
        for stage in ("", "dataprep", "finetune"):
            job = self.fetch(interaction_id, stage)
            if job is not None:
                try:
                    job.cancel()
                except Exception:
                    pass
                try:
                    job.delete()
                except Exception:  # RQ's registries changed under it (its worker ended it meanwhile)
                    log.warning("could not delete job %s from RQ's registries: removing its hash", job.id,
                                exc_info=True)
                    self.redis.delete(job.key)  # what a runner watches to stop the work
