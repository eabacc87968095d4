"""The door: each request that asks for work is held to its user's plan, and its key's, before
anything is stored or queued (rate_limits.py keeps the counts in Redis, shared by every replica).

A text request is charged its tokens at admission, estimated from its body (about four bytes a
token) and its max_tokens (the runner's default reply length when absent); its job carries the
charge and the real count replaces the estimate when the reply ends (token_charges.py). A request
refused later at the door (a 4xx) gets back all but its request. A plan's monthly limits are
checked first (monthly.py).

Every answer of a limited route says how much is left, in the headers OpenAI's SDKs read:
x-ratelimit-{limit,remaining,reset}-{requests,tokens}. A refusal is a 429 with Retry-After (and
retry-after-ms), naming the limit and when it resets."""
from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from flask import Flask, Response, current_app, g, has_request_context, request
from redis import Redis

from controlplane.errors import TooManyRequests
from controlplane.usage import monthly
from controlplane.usage.plans import Limits
from controlplane.usage.rate_limits import Check, Outcome, RateLimits, seconds

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
BYTES_PER_TOKEN = 4
DEFAULT_REPLY_TOKENS = 512  # the runner's reply cap when a request names none (HELIX_MAX_TOKENS)


class Work(enum.Enum):
    TEXT = "text"
    IMAGE = "image"
    FINETUNE = "finetune"


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


def admit(work: Work | None, fields: Any = None) -> None:
    """Charges the request to its user's (and key's) limits, or refuses it with a 429 that names
    the limit it met; `work`: what it asks for (None: nothing but a request)."""
    monthly.check_month(work == Work.FINETUNE, g.user.get("plan_limits") or Limits())
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
