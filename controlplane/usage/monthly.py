"""A plan's monthly limits, held at the door: credits (by the price table) and training minutes.
What a user used this month is PostgreSQL's sum of their usage records, remembered in Redis for a
minute and counted up as records are made, and read by each process at most once a second per
user: a check mostly costs nothing."""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from functools import partial

from cachetools import TTLCache
from flask import current_app, g
from redis import Redis

from controlplane.errors import InsufficientQuota
from controlplane.storage import db
from controlplane.usage import metering
from controlplane.usage.plans import Limits

log = logging.getLogger(__name__)


def _next_month() -> tuple[datetime, int]:
    """The next month's start, and the seconds until it."""
    now = datetime.now(timezone.utc)
    start = (metering.month_start(now) + timedelta(days=32)).replace(day=1)
    return start, int((start - now).total_seconds())


class OutOfCredits(InsufficientQuota):
    """The plan's credits for this month are spent: OpenAI's insufficient_quota."""

    def __init__(self, spent: float, limit: int):
        next_month, wait = _next_month()
        super().__init__(f"your plan's {limit} credits for this month are spent ({spent:.2f} used): new work"
                         f" is refused until the month ends ({next_month:%Y-%m-%d} UTC) or your plan is raised",
                         "monthly_credits", retry_after=wait, resets_in_seconds=wait)


class OutOfTraining(InsufficientQuota):
    """The plan's training minutes for this month are used."""

    def __init__(self, seconds: float, minutes: int):
        next_month, wait = _next_month()
        super().__init__(f"your plan's {minutes} training minutes for this month are used ({seconds / 60:.1f}):"
                         f" new fine-tunes are refused until {next_month:%Y-%m-%d} UTC or your plan is raised",
                         "training_minutes_per_month", retry_after=wait, resets_in_seconds=wait)


MONTH_CACHE_SECONDS = 60
_ADD_TO_MONTH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'credits', ARGV[1])
  redis.call('HINCRBYFLOAT', KEYS[1], 'training_seconds', ARGV[2])
end
return 1
"""


def _month_key(owner: str) -> str:
    return f"helix:month:{owner}:{metering.month_start():%Y-%m}"


def used_this_month(redis: Redis, owner: str) -> metering.MonthUsed:
    """The owner's credits and training this month: PostgreSQL's sums, remembered in Redis for a
    minute and brought up to date as records are made (add_to_month)."""
    cached = redis.hgetall(_month_key(owner))
    if cached:
        return metering.MonthUsed(float(cached.get(b"credits", 0)), float(cached.get(b"training_seconds", 0)))
    with db.transaction() as conn:
        used = metering.used_this_month(conn, owner)
    with redis.pipeline() as pipe:
        pipe.hsetnx(_month_key(owner), "credits", repr(used.credits))
        pipe.hsetnx(_month_key(owner), "training_seconds", repr(used.training_seconds))
        pipe.expire(_month_key(owner), MONTH_CACHE_SECONDS)
        pipe.execute()
    return used


# A busy user's checks within a second share one read of Redis: a monthly limit may be passed by
# what a second of requests brings, and a check costs no round trip most of the time.
RECENT_SECONDS = 1.0
_recent: TTLCache = TTLCache(maxsize=10_000, ttl=RECENT_SECONDS)
_recent_lock = threading.Lock()


def _recently_used(owner: str) -> metering.MonthUsed:
    with _recent_lock:
        used = _recent.get(owner)
    if used is None:
        used = used_this_month(current_app.extensions["redis"], owner)
        with _recent_lock:
            _recent[owner] = used
    return used


def record(conn, used: metering.Used, config, redis: Redis) -> None:
    """Records a finished job's usage (priced by config's table, waiting for the webhook if one
    is set) and, once that commits, counts it toward its owner's month."""
    recorded = metering.record(conn, used, config.prices, delivered=not config.usage_webhook_url)
    if recorded:
        db.after_commit(conn, partial(add_to_month, redis, *recorded))


def add_to_month(redis: Redis, owner: str, used: metering.MonthUsed) -> None:
    """A record was committed: the remembered sums, if any, count it (this process's copy is
    dropped; other processes' last at most RECENT_SECONDS)."""
    with _recent_lock:
        _recent.pop(owner, None)
    if used.credits or used.training_seconds:
        try:
            redis.eval(_ADD_TO_MONTH, 1, _month_key(owner), repr(used.credits), repr(used.training_seconds))
        except Exception:
            log.warning("could not count the month's use of %s: the sums are read again within a minute", owner)


def check_month(finetune: bool, limits: Limits) -> None:
    """Refuses new work past the plan's monthly credits, and a fine-tune past its training minutes."""
    minutes = limits.training_minutes_per_month if finetune else None
    if not (limits.monthly_credits or minutes):
        return
    used = _recently_used(g.user["id"])
    if limits.monthly_credits and used.credits >= limits.monthly_credits:
        raise OutOfCredits(used.credits, limits.monthly_credits)
    if minutes and used.training_seconds >= minutes * 60:
        raise OutOfTraining(used.training_seconds, minutes)
