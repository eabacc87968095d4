"""The door: each request that asks for work is held to its user's plan, and its key's, before
anything is stored or queued (rate_limits.py keeps the counts in Redis, shared by every replica).

A text request is charged its tokens at admission, estimated from its body (about four bytes a
token) and its max_tokens (the runner's default reply length when absent); its job carries the
charge, and when the reply ends the real count of prompt and reply tokens replaces the estimate.
A request refused later at the door (a 4xx) gets back all but its request.

Every answer of a limited route says how much is left, in the headers OpenAI's SDKs read:
x-ratelimit-{limit,remaining,reset}-{requests,tokens}. A refusal is a 429 with Retry-After (and
retry-after-ms), naming the limit and when it resets."""
from __future__ import annotations

import enum
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import psycopg
from flask import Flask, Response, current_app, g, has_request_context, request
from redis import Redis

from controlplane.errors import TooManyRequests
from controlplane.storage import db
from controlplane.storage.filestore import Filestore, UserFiles
from controlplane.usage import metering
from controlplane.usage.plans import Limits
from controlplane.usage.rate_limits import Check, Outcome, RateLimits, seconds

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
BYTES_PER_TOKEN = 4
DEFAULT_REPLY_TOKENS = 512  # the runner's reply cap when a request names none (HELIX_MAX_TOKENS)
CHARGE_SECONDS = 2 * 24 * 3600  # a job's charge waits this long for its reply to end


class Work(enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    FINETUNE = "finetune"


def _next_month() -> tuple[datetime, int]:
    """The next month's start, and the seconds until it."""
    now = datetime.now(timezone.utc)
    start = (metering.month_start(now) + timedelta(days=32)).replace(day=1)
    return start, int((start - now).total_seconds())


class OutOfCredits(TooManyRequests):
    """The plan's credits for this month are spent: OpenAI's insufficient_quota."""

    def __init__(self, spent: float, limit: int):
        next_month, wait = _next_month()
        super().__init__(f"your plan's {limit} credits for this month are spent ({spent:.2f} used): new work"
                         f" is refused until the month ends ({next_month:%Y-%m-%d} UTC) or your plan is raised")
        self.details = {"code": "insufficient_quota", "type": "insufficient_quota", "limit": "monthly_credits",
                        "resets_in_seconds": wait}
        self.headers = {"Retry-After": str(wait), "x-should-retry": "false"}


class OutOfTraining(TooManyRequests):
    """The plan's training minutes for this month are used."""

    def __init__(self, seconds: float, minutes: int):
        next_month, wait = _next_month()
        super().__init__(f"your plan's {minutes} training minutes for this month are used ({seconds / 60:.1f}):"
                         f" new fine-tunes are refused until {next_month:%Y-%m-%d} UTC or your plan is raised")
        self.details = {"code": "insufficient_quota", "type": "insufficient_quota",
                        "limit": "training_minutes_per_month", "resets_in_seconds": wait}
        self.headers = {"Retry-After": str(wait), "x-should-retry": "false"}


class StorageFull(TooManyRequests):
    """An upload would take the user past their plan's filestore bytes."""

    def __init__(self, used: int, incoming: int, limit: int):
        super().__init__(f"this upload of {incoming} bytes would take your files to {used + incoming} bytes, past"
                         f" your plan's {limit}: delete files (or sessions) you no longer need first")
        self.details = {"code": "insufficient_quota", "type": "insufficient_quota", "limit": "storage_bytes",
                        "used_bytes": used}
        self.headers = {"x-should-retry": "false"}


def check_storage(filestore: Filestore) -> None:
    """Refuses an upload (the request's body) past the plan's filestore bytes, before it is stored.
    What runners write for the user (images, adapters) is counted, never refused."""
    limit = (g.user.get("plan_limits") or Limits()).storage_bytes
    if not limit:
        return
    used, incoming = UserFiles(filestore, g.user["id"]).used_bytes(), request.content_length or 0
    if used + incoming > limit:
        raise StorageFull(used, incoming, limit)


class RateLimited(TooManyRequests):
    def __init__(self, message: str, limit: str, retry_ms: int, headers: dict[str, str], retry: bool = True):
        super().__init__(message)
        self.details = {"code": "rate_limit_exceeded", "limit": limit, "resets_in_seconds": seconds(retry_ms)}
        self.headers = {**headers, "Retry-After": str(seconds(retry_ms)), "retry-after-ms": str(max(retry_ms, 1))}
        if not retry:
            self.headers["x-should-retry"] = "false"


@dataclass
class Admission:
    """What the request was charged, until its job takes the token charge over (or it fails)."""

    outcomes: list[Outcome]
    tokens: int = 0
    bound: bool = False
    given_back: bool = False


def _scopes(user: Mapping[str, Any]) -> list[tuple[str, str, Limits]]:
    """Whose limits hold: the user's plan, and the key's own plan when it has one."""
    scopes = [("user", user["id"], user.get("plan_limits") or Limits())]
    if user.get("key_id") and user.get("key_plan_limits") is not None:
        scopes.append(("key", user["key_id"], user["key_plan_limits"]))
    return scopes


def _day() -> tuple[str, int]:
    """Today (UTC) and the milliseconds left of it."""
    now = datetime.now(timezone.utc)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return now.strftime("%Y-%m-%d"), max(1, int((midnight - now).total_seconds() * 1000))


def _whole(value: Any, default: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 1 else default


def token_estimate(fields: Any) -> int:
    """The prompt's tokens (its body, about four bytes a token) plus the reply's cap, per choice."""
    fields = fields if isinstance(fields, Mapping) else {}
    reply = _whole(fields.get("max_completion_tokens", fields.get("max_tokens")), DEFAULT_REPLY_TOKENS)
    prompt = math.ceil((request.content_length or 0) / BYTES_PER_TOKEN)
    return prompt + reply * min(_whole(fields.get("n"), 1), 128)


def _checks(work: Work | None, fields: Any, tokens: int) -> list[Check]:
    checks = []
    day, day_left = _day()
    # OpenAI's n, or Helix's num_images.
    images = _whole(fields.get("n", fields.get("num_images")), 1) if isinstance(fields, Mapping) else 1
    for scope, owner, limits in _scopes(g.user):
        prefix = f"helix:limit:{scope}:{owner}"
        if limits.requests_per_minute:
            checks.append(Check(f"{prefix}:requests", "rate", limits.requests_per_minute, 1, MINUTE_MS))
        if work == Work.TEXT and limits.tokens_per_minute:
            if tokens > limits.tokens_per_minute:
                raise RateLimited(
                    f"this request may use {tokens} tokens (its prompt and max_tokens), more than the"
                    f" {limits.tokens_per_minute} tokens per minute of your {scope}'s plan: lower max_tokens"
                    " or shorten the prompt", "tokens_per_minute", 0, {}, retry=False)
            checks.append(Check(f"{prefix}:tokens", "rate", limits.tokens_per_minute, tokens, MINUTE_MS))
        if work == Work.IMAGE and limits.images_per_day:
            checks.append(Check(f"{prefix}:images:{day}", "quota", limits.images_per_day, images, day_left))
        if work == Work.FINETUNE and limits.finetunes_per_day:
            checks.append(Check(f"{prefix}:finetunes:{day}", "quota", limits.finetunes_per_day, 1, day_left))
    return checks


_UNITS = {"requests": "requests per minute", "tokens": "tokens per minute", "images": "images per day",
          "finetunes": "fine-tunes per day"}


def _what(check: Check) -> tuple[str, str, str]:
    """The check's scope ("user" or "key"), its limit's name and its unit in words."""
    parts = check.key.split(":")
    unit = _UNITS[parts[4]]
    return parts[2], unit.replace(" ", "_").replace("-", ""), unit


def _duration(ms: int) -> str:
    """As OpenAI writes its reset headers: 20ms, 1.5s, 6m0s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    minutes, rest = divmod(ms / 1000, 60)
    secs = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{secs}s" if minutes else f"{secs}s"


def headers(outcomes: list[Outcome]) -> dict[str, str]:
    """x-ratelimit-* for requests and tokens, from the tightest of the scopes that limit them."""
    out: dict[str, str] = {}
    for name in ("requests", "tokens"):
        mine = [o for o in outcomes if o.check.key.endswith(f":{name}")]
        if mine:
            tightest = min(mine, key=lambda o: (o.remaining, -o.reset_ms))
            out.update({f"x-ratelimit-limit-{name}": str(tightest.check.limit),
                        f"x-ratelimit-remaining-{name}": str(tightest.remaining),
                        f"x-ratelimit-reset-{name}": _duration(tightest.reset_ms)})
    return out


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


def add_to_month(redis: Redis, owner: str, used: metering.MonthUsed) -> None:
    """A record was committed: the remembered sums, if any, count it."""
    if used.credits or used.training_seconds:
        try:
            redis.eval(_ADD_TO_MONTH, 1, _month_key(owner), repr(used.credits), repr(used.training_seconds))
        except Exception:
            log.warning("could not count the month's use of %s: the sums are read again within a minute", owner)


def _check_month(work: Work | None, limits: Limits) -> None:
    """Refuses new work past the plan's monthly credits, and a fine-tune past its training minutes."""
    minutes = limits.training_minutes_per_month if work == Work.FINETUNE else None
    if not (limits.monthly_credits or minutes):
        return
    used = used_this_month(current_app.extensions["redis"], g.user["id"])
    if limits.monthly_credits and used.credits >= limits.monthly_credits:
        raise OutOfCredits(used.credits, limits.monthly_credits)
    if minutes and used.training_seconds >= minutes * 60:
        raise OutOfTraining(used.training_seconds, minutes)


def admit(work: Work | None, fields: Any = None) -> None:
    """Charges the request to its user's (and key's) limits, or refuses it with a 429 that names
    the limit it met; `work`: what it asks for (None: nothing but a request)."""
    _check_month(work, g.user.get("plan_limits") or Limits())
    tokens = token_estimate(fields) if work == Work.TEXT else 0
    checks = _checks(work, fields, tokens)
    if not checks:
        return
    limits: RateLimits = current_app.extensions["rate_limits"]
    charged, outcomes = limits.charge(checks)
    g.rate_limit_headers = headers(outcomes)
    if not charged:
        refused = max((o for o in outcomes if o.retry_ms), key=lambda o: o.retry_ms)
        scope, name, unit = _what(refused.check)
        raise RateLimited(f"rate limit reached: {refused.check.limit} {unit} on your {scope}'s plan;"
                          f" retry in {seconds(refused.retry_ms)}s", name, refused.retry_ms, g.rate_limit_headers)
    g.admission = Admission(outcomes, tokens if any(o.check.key.endswith(":tokens") for o in outcomes) else 0)


def queued_jobs_limit() -> int | None:
    """The tightest queued-jobs limit on a user's request (None outside one, or when unlimited):
    work a runner's report or the reconciler queues is never refused."""
    if not has_request_context() or g.get("user") is None:
        return None
    found = [limits.queued_jobs for _, _, limits in _scopes(g.user) if limits.queued_jobs]
    return min(found) if found else None


def request_key_id() -> str | None:
    """The API key a user's request came with (None: a signed-in browser, or no user's request)."""
    user = g.get("user") if has_request_context() else None
    return user.get("key_id") if user else None


def bind_job(conn: psycopg.Connection, interaction_id: str) -> None:
    """The request's token charge goes with the job it queues (once it commits), to be made good
    when the reply ends. Work queued outside a request (a fine-tune's next stage) has none."""
    if not has_request_context():
        return
    admission: Admission | None = g.get("admission")
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


def _give_back(limits: RateLimits, admission: Admission) -> None:
    """A request refused after its charge (a 400, say) gets back all of it but its request."""
    for outcome in admission.outcomes:
        check = outcome.check
        if check.kind == "quota":
            limits.redis.decrby(check.key, check.cost)
        elif check.key.endswith(":tokens"):
            limits.adjust(check.key, check.limit, check.period_ms, -check.cost)


def init_app(app: Flask, redis: Redis) -> None:
    app.extensions["rate_limits"] = RateLimits(redis)

    @app.after_request
    def _limits_said(response: Response) -> Response:
        admission: Admission | None = g.get("admission")
        if admission is not None and response.status_code >= 400 and not admission.bound and not admission.given_back:
            admission.given_back = True
            try:
                _give_back(app.extensions["rate_limits"], admission)
            except Exception:
                log.warning("could not give back a refused request's charge", exc_info=True)
        response.headers.update(g.get("rate_limit_headers") or {})
        return response
