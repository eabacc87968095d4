"""Where work can go, and why a session still waits.

- Fleet fit: work whose declared memory need (shared/memory.py) is more than any live runner
  serving its model announced it has is refused at once, with what it needs and what the largest
  runner has, instead of waiting in a queue no runner could ever take it from.
- Waiting status: an interaction whose job is still queued shows its place in its queue and why
  it waits (no runner serves the model, jobs ahead of it, a runner without the memory for it).
  Computed only for such interactions, in one Redis round trip and one indexed query, so a
  status poll of finished sessions costs nothing more.
"""
from __future__ import annotations

from typing import Any, Iterable

import psycopg
from redis import Redis
from rq import Queue
from rq.job import Job

from controlplane.config import Config
from controlplane.errors import BadRequest
from controlplane.fleet import fair_share_store
from controlplane.fleet import store as fleet_store
from controlplane.fleet.dispatch import job_stage
from controlplane.storage.rows import InteractionRow, SessionRow
from shared.jobs import WorkKind, job_id_for, queue_name
from shared.memory import capacity, human, memory_wait_key, need_of
from shared.types import Creator, InteractionState, SessionMode, SessionType

IMAGE_KINDS = (WorkKind.IMAGE_INFERENCE, WorkKind.IMAGE_FINETUNE)


def work_kind(session_type: str, stage: str) -> WorkKind:
    """The kind of the job of an interaction at this stage (dispatch.job_stage), as build_job queues it."""
    if session_type == SessionType.IMAGE:
        return WorkKind.IMAGE_FINETUNE if stage else WorkKind.IMAGE_INFERENCE
    return {"dataprep": WorkKind.TEXT_DATAPREP, "finetune": WorkKind.TEXT_FINETUNE}.get(stage, WorkKind.TEXT_INFERENCE)


def session_type_of(kind: WorkKind) -> SessionType:
    return SessionType.IMAGE if kind in IMAGE_KINDS else SessionType.TEXT


def kinds_of(mode: str, session_type: str) -> tuple[WorkKind, ...]:
    """The kinds of work a session of this mode and type will queue."""
    if session_type == SessionType.IMAGE:
        return (WorkKind.IMAGE_FINETUNE,) if mode == SessionMode.FINETUNE else (WorkKind.IMAGE_INFERENCE,)
    if mode == SessionMode.FINETUNE:
        return WorkKind.TEXT_DATAPREP, WorkKind.TEXT_FINETUNE
    return (WorkKind.TEXT_INFERENCE,)


def fleet_refusal(conn: psycopg.Connection, config: Config, model: str, kind: WorkKind) -> str:
    """Why no live runner serving `model` could ever hold a job of this kind ("" if one could, or
    if that cannot be told: no runner serves the model yet, or one announced no memory)."""
    need = need_of(config.memory_needs, model, kind)
    if need <= 0:
        return ""
    # Runners seen within HELIX_RUNNER_TTL: one restarting for a minute still counts.
    live = fleet_store.live_runners(conn, model, session_type_of(kind).value, config.runner_ttl)
    sizes = [capacity(r["info"] or {}) for r in live]
    if not sizes or 0 in sizes or max(sizes) >= need:
        return ""
    return (f"{kind.value} on model {model!r} needs {human(need)} of memory (its declared need:"
            f" HELIX_MEMORY_NEEDS), more than any runner serving it has: the largest has {human(max(sizes))}")


def check_fleet(conn: psycopg.Connection, config: Config, model: str, kinds: Iterable[WorkKind]) -> None:
    """Refuses now (400) work that no runner of the fleet could ever hold."""
    for kind in kinds:
        refusal = fleet_refusal(conn, config, model, kind)
        if refusal:
            raise BadRequest(refusal)


def _jobs_ahead(n: int) -> str:
    return "1 job ahead" if n == 1 else f"{n} jobs ahead"


def waiting_status(conn: psycopg.Connection, redis: Redis, config: Config, session: SessionRow,
                   interaction: InteractionRow) -> dict[str, Any] | None:
    """`queue_position` (0: next to be taken) and `waiting_reason` of an interaction whose job is
    queued; None when it is not waiting in a queue (finished, running, or waiting for its user)."""
    if (interaction.finished or interaction.creator != Creator.SYSTEM
            or interaction.state != InteractionState.WAITING):
        return None
    place = fair_share_store.held(conn, interaction.id)
    if place is not None:  # held back in PostgreSQL behind its owner's earlier jobs (fair share)
        return _held_status(conn, redis, config, session, place)
    stage = job_stage(interaction)
    job_id = job_id_for(interaction.id, stage)
    model = session.model_name
    queue_key = Queue.redis_queue_namespace_prefix + queue_name(work_kind(session.type, stage), model)
    with redis.pipeline(transaction=False) as pipe:  # one round trip
        pipe.hget(Job.key_for(job_id), "status")
        pipe.lpos(queue_key, job_id)  # stops at the job: it costs the jobs ahead of it
        pipe.get(memory_wait_key(job_id))
        status, position, memory_note = pipe.execute()
    if status == b"started":
        return None
    if status == b"queued" and position is None:
        position = 0  # being taken by a worker right now
    elif status not in (b"queued", None):
        position = None  # ended or stopped: the reconciler re-queues or ends it at its next pass
    kind_type = SessionType(session.type)
    if not fleet_store.live_runners(conn, model, kind_type.value, config.runner_gone_seconds):  # alive now, not gone
        reason = f"no runner serves model {model}"
    elif status is None:
        reason = "queued again: its job was lost (a restart of Redis) and is being recreated"
    elif status != b"queued":
        reason = f"its job {status.decode()}: it is being queued again or ended"
    elif memory_note:
        reason = memory_note.decode()
    elif position:
        reason = _jobs_ahead(position)
    else:
        reason = f"next in line: waiting for a free worker on a runner serving {model}"
    return {"queue_position": position, "waiting_reason": reason}


def _held_status(conn: psycopg.Connection, redis: Redis, config: Config, session: SessionRow,
                 place: dict[str, Any]) -> dict[str, Any]:
    """A held job is taken after every job now in its queue and its owner's held jobs before it."""
    position = redis.llen(Queue.redis_queue_namespace_prefix + place["queue"]) + place["held_ahead"]
    if not fleet_store.live_runners(conn, session.model_name, session.type, config.runner_gone_seconds):
        reason = f"no runner serves model {session.model_name}"
    else:
        reason = f"{place['own_ahead']} of your own jobs ahead"
    return {"queue_position": position, "waiting_reason": reason}


def waits_in_queue(view: dict[str, Any]) -> bool:
    """Whether the session view shows an interaction whose queue position annotate() added."""
    return any("queue_position" in interaction for interaction in view["interactions"])


def annotate(conn: psycopg.Connection, redis: Redis, config: Config, view: dict[str, Any],
             session: SessionRow, interactions: list[InteractionRow]) -> dict[str, Any]:
    """Adds the waiting status to the session view's unfinished interactions (the views of
    `interactions`, in order), in place."""
    for interaction, shown in zip(interactions, view["interactions"]):
        if interaction.finished or interaction.creator != Creator.SYSTEM:
            continue
        try:
            status = waiting_status(conn, redis, config, session, interaction)
        except Exception:  # Redis away: the session itself still reads from PostgreSQL
            status = None
        if status is not None:
            shown.update(status)
    return view
