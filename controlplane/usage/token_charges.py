"""A text request's token charge, made good when its reply ends: the door charges an estimate
(usage/admission.py); the job it queues carries the charge (a small record in Redis, by its
interaction); the runner's final report says how many tokens the reply used, and the difference
goes back to (or is taken from) the same per-minute buckets."""
from __future__ import annotations

import json
import logging

import psycopg
from flask import current_app, g, has_request_context
from redis import Redis

from controlplane.storage import db
from controlplane.usage.rate_limits import RateLimits

log = logging.getLogger(__name__)
CHARGE_SECONDS = 2 * 24 * 3600  # a job's charge waits this long for its reply to end


def bind_job(conn: psycopg.Connection, interaction_id: str) -> None:
    """The request's token charge goes with the job it queues (once it commits), to be made good
    when the reply ends. Work queued outside a request (a fine-tune's next stage) has none."""
    if not has_request_context():
        return
    admission = g.get("admission")
    if admission is None or admission.bound or not admission.tokens:
        return
    admission.bound = True
    rates = [[o.check.key, o.check.limit, o.check.period_ms] for o in admission.outcomes
             if o.check.key.endswith(":tokens")]
    record = json.dumps({"tokens": admission.tokens, "rates": rates})
    redis: Redis = current_app.extensions["redis"]
    db.after_commit(conn, lambda: _store_charge(redis, interaction_id, record))


def _charge_key(interaction_id: str) -> str:
    return f"helix:charge:{interaction_id}"


def _store_charge(redis: Redis, interaction_id: str, record: str) -> None:
    try:
        redis.set(_charge_key(interaction_id), record, ex=CHARGE_SECONDS)
    except Exception:
        log.warning("could not record the token charge of %s: its estimate stands", interaction_id, exc_info=True)


def settle(redis: Redis, interaction_id: str, used_tokens: int) -> None:
    """The reply ended having used `used_tokens`: its charge becomes that, not the estimate."""
    try:
        record = redis.getdel(_charge_key(interaction_id))
        if record is None:
            return
        charge = json.loads(record)
        limits = RateLimits(redis)
        for key, limit, period_ms in charge["rates"]:
            limits.adjust(key, limit, period_ms, used_tokens - charge["tokens"])
    except Exception:
        log.warning("could not settle the token charge of %s", interaction_id, exc_info=True)
