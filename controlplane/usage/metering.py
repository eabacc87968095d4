"""Metering: what each finished piece of work used, recorded once, and read back by day, model,
key or user. The runner's final report is what is recorded (reports.py calls record()): a job that
was retried, or whose runner died, finishes once, so it is recorded once; the record is keyed by
its interaction and stage besides, so no path can count it twice."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from controlplane.config import PRICED_UNITS
from controlplane.errors import BadRequest

if TYPE_CHECKING:
    import psycopg

USED = Counter("helix_usage_total", "What finished work used, by the owner's plan, kind of work and unit"
               " (prompt_tokens, completion_tokens, images, runner_seconds, training_tokens, stored_bytes);"
               " never by user", ["plan", "kind", "unit"])
GROUPS = ("day", "model", "key", "user")
_GROUP_COLUMN = {"day": "to_char(date_trunc('day', recorded AT TIME ZONE 'UTC'), 'YYYY-MM-DD')", "model": "model",
                 "key": "coalesce(api_key_id, 'web')", "user": "owner"}
UNITS = PRICED_UNITS
DEFAULT_DAYS = 30
MAX_DAYS = 366


def moment(text: str, name: str) -> datetime:
    """A day (2026-12-01, from its start, UTC) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"'{name}' must be a date (2026-12-01) or an ISO 8601 time, got {text[:40]!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def period(start_text: str | None, end_text: str | None) -> tuple[datetime, datetime]:
    """From `start_text` (default: DEFAULT_DAYS before the end) to `end_text` (default: now), at
    most MAX_DAYS apart."""
    end = moment(end_text, "to") if end_text else datetime.now(timezone.utc)
    start = moment(start_text, "from") if start_text else end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise BadRequest("'from' must be before 'to'")
    if end - start > timedelta(days=MAX_DAYS):
        raise BadRequest(f"ask for at most {MAX_DAYS} days at a time")
    return start, end


@dataclass(frozen=True)
class Used:
    """One finished job's usage."""

    interaction_id: str
    stage: str
    session_id: str
    model: str
    kind: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    runner_seconds: float = 0.0
    training_tokens: int = 0  # a fine-tune's examples' tokens times its epochs
    stored_bytes: int = 0     # what the job left in its owner's filestore


def positive(value: Any) -> int:
    """A count a runner reported: a whole number above 0, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def trained_tokens(metadata: dict[str, Any], complete: bool) -> int:
    """The tokens a fine-tune trained on, as OpenAI counts `trained_tokens`: its examples' tokens
    times its epochs (the trainer's start report); a run that ended early (failed, cancelled, or
    stopped once it had learned its examples: `training_converged`), the share of its steps it
    took. 0 for work that trained nothing."""
    run = metadata.get("training_run")
    if not isinstance(run, dict):
        return 0
    whole = positive(run.get("train_tokens")) * positive(run.get("epochs"))
    converged = metadata.get("training_converged")
    if complete and not isinstance(converged, dict):
        return whole
    total = positive(run.get("total_steps"))
    if isinstance(converged, dict):
        done = positive(converged.get("step"))
    else:
        history = metadata.get("training_history")
        done = max((positive(p.get("step")) for p in history if isinstance(p, dict)), default=0) if isinstance(
            history, list) else 0
    return whole * min(done, total) // total if total else 0


def price(prices: dict[str, dict[str, float]], model: str, kind: str, unit: str) -> float:
    """Credits per unit: the most specific entry of the price table that names the unit."""
    for scope in (f"{model} {kind}", model, kind, "*"):
        if unit in prices.get(scope, {}):
            return prices[scope][unit]
    return 0.0


def credits_of(prices: dict[str, dict[str, float]], used: Used) -> float:
    return sum(getattr(used, unit) * price(prices, used.model, used.kind, unit) for unit in UNITS)


TRAINING_KINDS = ("text-finetune", "image-finetune")


@dataclass(frozen=True)
class MonthUsed:
    """What counts against a plan's monthly limits."""

    credits: float = 0.0
    training_seconds: float = 0.0


def record(conn: psycopg.Connection, used: Used, prices: dict[str, dict[str, float]],
           delivered: bool) -> tuple[str, MonthUsed] | None:
    """Records the job's usage against its session's owner and the key that asked for it (kept
    with its fair-share place), priced by the table; `delivered`: no webhook waits for it.
    Returns its owner and what it adds to their month, or None when it was recorded before."""
    row = conn.execute(
        "INSERT INTO usage_records (interaction_id, stage, owner, api_key_id, session_id, model, kind,"
        " prompt_tokens, completion_tokens, images, width, height, steps, runner_seconds, training_tokens,"
        " stored_bytes, credits, delivered)"
        " SELECT %(interaction_id)s, %(stage)s, s.owner,"
        " (SELECT api_key_id FROM queued_work WHERE interaction_id = %(interaction_id)s), s.id, %(model)s, %(kind)s,"
        " %(prompt_tokens)s, %(completion_tokens)s, %(images)s, %(width)s, %(height)s, %(steps)s, %(runner_seconds)s,"
        " %(training_tokens)s, %(stored_bytes)s, %(credits)s, CASE WHEN %(delivered)s THEN now() END"
        " FROM sessions s WHERE s.id = %(session_id)s"
        " ON CONFLICT (interaction_id, stage) DO NOTHING"
        " RETURNING owner, (SELECT plan FROM users WHERE id = owner) AS plan",
        {**asdict(used), "credits": credits_of(prices, used), "delivered": delivered}).fetchone()
    if row is None:
        return None
    for unit in UNITS:
        amount = getattr(used, unit)
        if amount:
            USED.labels(row["plan"], used.kind, unit).inc(amount)
    training = used.runner_seconds if used.kind in TRAINING_KINDS else 0.0
    return row["owner"], MonthUsed(credits_of(prices, used), training)


def month_start(now: datetime | None = None) -> datetime:
    now = now or datetime.now(timezone.utc)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def used_this_month(conn: psycopg.Connection, owner: str) -> MonthUsed:
    row = conn.execute(
        "SELECT coalesce(sum(credits), 0) AS credits,"
        " coalesce(sum(runner_seconds) FILTER (WHERE kind = ANY(%s)), 0) AS training_seconds"
        " FROM usage_records WHERE owner = %s AND recorded >= %s",
        (list(TRAINING_KINDS), owner, month_start())).fetchone()
    return MonthUsed(float(row["credits"]), float(row["training_seconds"]))


def summary(conn: psycopg.Connection, owner: str | None, start: datetime, end: datetime,
            group_by: str) -> list[dict[str, Any]]:
    """Usage from `start` to `end` (exclusive), by `group_by` (one of GROUPS), for one owner or
    (None) everyone; each group with its jobs, tokens, images, runner-seconds, trained tokens and
    stored bytes."""
    column = _GROUP_COLUMN[group_by]
    mine = " AND owner = %(owner)s" if owner is not None else ""
    rows = conn.execute(
        f"SELECT {column} AS group_key, count(*) AS jobs, sum(prompt_tokens) AS prompt_tokens,"
        " sum(completion_tokens) AS completion_tokens, sum(images) AS images,"
        " sum(runner_seconds) AS runner_seconds, sum(training_tokens) AS training_tokens,"
        " sum(stored_bytes) AS stored_bytes, sum(credits) AS credits FROM usage_records"
        f" WHERE recorded >= %(start)s AND recorded < %(end)s{mine} GROUP BY 1 ORDER BY 1",
        {"owner": owner, "start": start, "end": end}).fetchall()
    return [{group_by: r["group_key"], "jobs": r["jobs"], "prompt_tokens": int(r["prompt_tokens"]),
             "completion_tokens": int(r["completion_tokens"]),
             "total_tokens": int(r["prompt_tokens"]) + int(r["completion_tokens"]), "images": int(r["images"]),
             "runner_seconds": round(float(r["runner_seconds"]), 3), "training_tokens": int(r["training_tokens"]),
             "stored_bytes": int(r["stored_bytes"]), "credits": round(float(r["credits"]), 6)}
            for r in rows]


def totals(groups: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("jobs", "prompt_tokens", "completion_tokens", "total_tokens", "images", "runner_seconds",
            "training_tokens", "stored_bytes", "credits")
    out = {k: sum(g[k] for g in groups) for k in keys}
    out["runner_seconds"], out["credits"] = round(out["runner_seconds"], 3), round(out["credits"], 6)
    return out
