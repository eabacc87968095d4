"""Which runner took which interaction, after how long in the queue: the last few hundred, in Redis.

Recorded at the cheapest reliable point: the first update a runner sends for an attempt at an
interaction's job (the runner update route already knows the runner and the interaction). RQ
stamps the job when it is queued and when a worker starts it; the wait is the difference, so a job
queued again after a runner died counts its own wait, and each attempt is one decision (keyed by
the job's start time, one Redis round trip per update once it is recorded).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from redis import Redis
from rq.job import Job
from rq.utils import utcparse

from controlplane.storage.rows import InteractionRow
from shared.jobs import job_id_for

log = logging.getLogger(__name__)
DECISIONS_KEY = "helix:scheduling-decisions"
KEPT = 500  # decisions kept, newest first
_SEEN_PREFIX = "helix:scheduling-decided:"
_SEEN_SECONDS = 7 * 24 * 3600


def _seconds(stamp: bytes | None) -> float | None:
    try:
        return utcparse(stamp.decode()).timestamp() if stamp else None
    except ValueError:
        return None


def record(redis: Redis, interaction: InteractionRow, stage: str, runner_id: str) -> dict[str, Any] | None:
    """Records the decision behind this update if it is the first of its attempt; returns it (else
    None). Never raises: a decision lost to a Redis hiccup must not refuse the runner's update."""
    job_id = job_id_for(interaction.id, stage)
    try:
        with redis.pipeline(transaction=False) as pipe:
            pipe.hmget(Job.key_for(job_id), "enqueued_at", "started_at", "origin", "worker_name")
            pipe.get(_SEEN_PREFIX + job_id)
            (enqueued_at, started_at, origin, worker), seen = pipe.execute()
        if not started_at or seen == started_at:
            return None
        queued, started = _seconds(enqueued_at), _seconds(started_at)
        decision = {"interaction_id": interaction.id, "session_id": interaction.session_id,
                    "job_id": job_id, "runner": runner_id, "worker": (worker or b"").decode(),
                    "queue": (origin or b"").decode(), "at": round(time.time(), 3),
                    "waited_seconds": round(max(0.0, started - queued), 3) if queued and started else None}
        with redis.pipeline(transaction=False) as pipe:
            pipe.set(_SEEN_PREFIX + job_id, started_at, ex=_SEEN_SECONDS)
            pipe.lpush(DECISIONS_KEY, json.dumps(decision))
            pipe.ltrim(DECISIONS_KEY, 0, KEPT - 1)
            pipe.execute()
    except Exception as err:  # redis errors of every kind
        log.warning("could not record which runner took interaction %s: %s", interaction.id, err)
        return None
    log.info("runner %s took interaction %s after %ss in queue %s", runner_id, interaction.id,
             decision["waited_seconds"], decision["queue"])
    return decision


def recent(redis: Redis, limit: int = 50) -> list[dict[str, Any]]:
    """The newest decisions first."""
    return [json.loads(d) for d in redis.lrange(DECISIONS_KEY, 0, max(0, limit - 1))]
