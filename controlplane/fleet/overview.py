"""The queues as operators see them: their length, how long the job at the head has waited, and
the jobs fair share holds back for them in PostgreSQL.
Read by the dashboard and /metrics, beside the runners with their last reported state, alive or
gone (fleet.store.runners_with_tokens and runner_counts).
"""
from __future__ import annotations

import time
from typing import Any

from redis import Redis
from rq.job import Job
from rq.utils import utcparse

from shared.jobs import WorkKind

QUEUE_PREFIX = "helix:"
RQ_QUEUES_SET = "rq:queues"  # RQ keeps the key of every queue it has enqueued to in this set
RQ_QUEUE_KEY_PREFIX = "rq:queue:"


def kind_and_model(queue: str) -> tuple[str, str]:
    """helix:<kind>:<model> -> (kind, model); a queue named otherwise -> ("", rest)."""
    rest = queue[len(QUEUE_PREFIX):]
    kind, _, model = rest.partition(":")
    return (kind, model) if kind in {k.value for k in WorkKind} else ("", rest)


def queues(redis: Redis) -> list[dict[str, Any]]:
    """The platform's RQ queues: name, kind of work, model, jobs waiting and how long the one at
    the head has waited (RQ pops from the head; None when empty). Two round trips to Redis,
    whatever the number of queues."""
    names = sorted(k.decode()[len(RQ_QUEUE_KEY_PREFIX):] for k in redis.smembers(RQ_QUEUES_SET))
    names = [n for n in names if n.startswith(QUEUE_PREFIX)]
    with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(RQ_QUEUE_KEY_PREFIX + name)
            pipe.lindex(RQ_QUEUE_KEY_PREFIX + name, 0)
        found = pipe.execute()
    lengths, heads = found[0::2], found[1::2]
    with redis.pipeline(transaction=False) as pipe:
        for head in heads:
            pipe.hget(Job.key_for(head.decode()), "enqueued_at") if head else pipe.echo("")
        enqueued = pipe.execute()
    now = time.time()
    out = []
    for name, length, when in zip(names, lengths, enqueued):
        kind, model = kind_and_model(name)
        out.append({"name": name, "kind": kind, "model": model, "length": length,
                    "oldest_wait_seconds": _wait(when, now) if length else None})
    return out


def with_held(queues: list[dict[str, Any]], held: dict[str, int]) -> list[dict[str, Any]]:
    """The queues, each with `held`: its jobs held back in PostgreSQL by fair share (a queue whose
    every job is held, or running, is listed too)."""
    listed = [{**q, "held": held.get(q["name"], 0)} for q in queues]
    known = {q["name"] for q in queues}
    for name in sorted(set(held) - known):
        kind, model = kind_and_model(name)
        listed.append({"name": name, "kind": kind, "model": model, "length": 0, "oldest_wait_seconds": None,
                       "held": held[name]})
    return listed


def _wait(enqueued_at: bytes | None, now: float) -> float | None:
    """Seconds since an RQ timestamp (UTC, ISO format)."""
    if not enqueued_at:
        return None
    try:
        return round(max(0.0, now - utcparse(enqueued_at.decode()).timestamp()), 3)
    except ValueError:
        return None
