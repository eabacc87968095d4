"""The fleet as operators see it: runners with their last reported state (alive or gone), and the
queues with their length and oldest wait. Read by the dashboard, `helix runners list` and /metrics.

A runner is `gone` once it has not reported for `runner_gone_seconds` (HELIX_RUNNER_GONE_SECONDS).
Nothing else happens then: the work it held is already recovered by the reconciler once its
workers' heartbeats expire, which is sooner (shared.runners.HEARTBEAT_TTL_SECONDS).
"""
from __future__ import annotations

import time
from typing import Any

import psycopg
from redis import Redis
from rq.job import Job
from rq.utils import utcparse

from shared.jobs import WorkKind

QUEUE_PREFIX = "helix:"
RQ_QUEUES_SET = "rq:queues"  # RQ keeps the key of every queue it has enqueued to in this set
RQ_QUEUE_KEY_PREFIX = "rq:queue:"


def runners(conn: psycopg.Connection, gone_seconds: float) -> list[dict[str, Any]]:
    """Every registered runner, most recently heard from first, with `gone` and `seconds_since_seen`."""
    rows = conn.execute(
        "SELECT r.id, r.models, r.info, r.state, r.first_seen, r.last_seen, t.name AS token,"
        " t.revoked IS NOT NULL AS token_revoked, extract(epoch FROM now() - r.last_seen)::float8 AS ago"
        " FROM runners r JOIN runner_tokens t ON t.id = r.token_id ORDER BY r.last_seen DESC, r.id"
    ).fetchall()
    for row in rows:
        row["seconds_since_seen"] = round(max(0.0, row.pop("ago")), 1)
        row["gone"] = row["seconds_since_seen"] > gone_seconds or row["token_revoked"]
    return rows


def runner_counts(conn: psycopg.Connection, gone_seconds: float) -> dict[str, int]:
    """How many registered runners are alive and how many gone (one pass over the runners)."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE r.last_seen >= now() - make_interval(secs => %s) AND t.revoked IS NULL)"
        " AS alive, count(*) AS registered FROM runners r JOIN runner_tokens t ON t.id = r.token_id",
        (gone_seconds,)).fetchone()
    return {"alive": row["alive"], "gone": row["registered"] - row["alive"]}


def _kind_and_model(queue: str) -> tuple[str, str]:
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
        kind, model = _kind_and_model(name)
        out.append({"name": name, "kind": kind, "model": model, "length": length,
                    "oldest_wait_seconds": _wait(when, now) if length else None})
    return out


def _wait(enqueued_at: bytes | None, now: float) -> float | None:
    """Seconds since an RQ timestamp (UTC, ISO format)."""
    if not enqueued_at:
        return None
    try:
        return round(max(0.0, now - utcparse(enqueued_at.decode()).timestamp()), 3)
    except ValueError:
        return None
