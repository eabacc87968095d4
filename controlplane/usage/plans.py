"""Plans: named sets of limits kept in PostgreSQL. Every user is on one (`default`, which limits
nothing, unless set); a key may be put on a plan of its own, which then limits it besides its
user's plan (a key for a script that should have less than its user).

A plan is replaced whole when set: a limit not given is unlimited. Requests read their plans with
their key (accounts/auth.py remembers a key for SECRET_CACHE_SECONDS), so a change takes effect
within seconds on every replica."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

if TYPE_CHECKING:  # the `helix` command reads Limits on runner-only installs too, without psycopg
    import psycopg

DEFAULT_PLAN = "default"
_PLAN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class Limits(BaseModel):
    """A plan's limits; None is unlimited."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    requests_per_minute: PositiveInt | None = Field(None, description="requests that ask for work, per minute")
    tokens_per_minute: PositiveInt | None = Field(
        None, description="prompt and reply tokens per minute (estimated at the door, made good when the reply ends)")
    concurrent_jobs: PositiveInt | None = Field(None, description="jobs running at once (the rest wait their turn)")
    queued_jobs: PositiveInt | None = Field(
        None, description="jobs waiting for a worker (a request past it gets a 429)")
    images_per_day: PositiveInt | None = Field(None, description="images per day (UTC)")
    finetunes_per_day: PositiveInt | None = Field(None, description="fine-tunes per day (UTC)")
    training_minutes_per_month: PositiveInt | None = Field(
        None, description="minutes runners spend training the user's fine-tunes per calendar month (UTC)")
    storage_bytes: PositiveInt | None = Field(
        None, description="bytes of files the user may keep in the filestore (uploads past it are refused)")
    index_chunks: PositiveInt | None = Field(
        None, description="document chunks the user's retrieval indexes may hold, all sessions together")
    monthly_credits: PositiveInt | None = Field(
        None, description="credits of use per calendar month (UTC), by the price table (HELIX_PRICES)")
    event_streams: PositiveInt | None = Field(
        None, description="live event streams and waiting OpenAI calls at once, on every replica together")

    def stored(self) -> dict[str, int]:
        return self.model_dump(exclude_none=True)


LIMIT_NAMES = tuple(Limits.model_fields)
UNLIMITED = Limits()


class PlanError(ValueError):
    """A plan, user or key that does not exist, or a limit that is not one: nothing was changed."""


def limits_from(stored: dict[str, Any] | None) -> Limits:
    return UNLIMITED if not stored else Limits.model_validate(stored)


def plan_name_problem(name: str) -> str | None:
    if not _PLAN_NAME.fullmatch(name):
        return (f"a plan name is 1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter"
                f" or digit; got {name[:80]!r}")
    return None


def set_plan(conn: psycopg.Connection, name: str, limits: Limits) -> bool:
    """Creates the plan, or replaces its limits; returns whether it was new."""
    from psycopg.types.json import Jsonb

    if problem := plan_name_problem(name):
        raise PlanError(problem)
    row = conn.execute(
        "INSERT INTO plans (name, limits) VALUES (%s, %s::jsonb)"
        " ON CONFLICT (name) DO UPDATE SET limits = excluded.limits, updated = now()"
        " RETURNING (xmax = 0) AS created", (name, Jsonb(limits.stored()))).fetchone()
    return row["created"]


MEMBERS_SHOWN = 20


def list_plans(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every plan with its limits, how many users and keys are on it, and the first of its users."""
    rows = conn.execute(
        "SELECT p.name, p.limits, p.updated,"
        " (SELECT count(*) FROM users u WHERE u.plan = p.name) AS users,"
        " (SELECT count(*) FROM api_keys k WHERE k.plan = p.name) AS keys,"
        " ARRAY(SELECT u.email FROM users u WHERE u.plan = p.name ORDER BY u.email LIMIT %s) AS members"
        " FROM plans p ORDER BY p.name = %s DESC, p.name", (MEMBERS_SHOWN, DEFAULT_PLAN)).fetchall()
    return [{**row, "limits": limits_from(row["limits"])} for row in rows]


def _existing(conn: psycopg.Connection, plan: str) -> str:
    if conn.execute("SELECT 1 FROM plans WHERE name = %s", (plan,)).fetchone() is None:
        known = ", ".join(r["name"] for r in conn.execute("SELECT name FROM plans ORDER BY name"))
        raise PlanError(f"no plan {plan[:80]!r}: create it with `helix plans set {plan[:80]} ...`"
                        f" (plans: {known})")
    return plan


def set_user_plan(conn: psycopg.Connection, email: str, plan: str) -> dict[str, Any]:
    _existing(conn, plan)
    row = conn.execute("UPDATE users SET plan = %s WHERE email = %s RETURNING id, email, plan",
                       (plan, email)).fetchone()
    if row is None:
        raise PlanError(f"no user {email[:200]!r}: see `helix users create`")
    return row


def set_key_plan(conn: psycopg.Connection, key_id: str, plan: str | None) -> None:
    """Puts an API key on a plan of its own (None: its user's plan alone limits it)."""
    if plan is not None:
        _existing(conn, plan)
    if conn.execute("UPDATE api_keys SET plan = %s WHERE id = %s", (plan, key_id)).rowcount == 0:
        raise PlanError(f"no API key with id {key_id[:80]!r}")
