"""The runners table: what each runner announced (models, facts, state) and when it was last seen.

The reads for scheduling are of live runners: seen within `seconds` (HELIX_RUNNER_TTL, or the
shorter HELIX_RUNNER_GONE_SECONDS where a runner must be alive now). The reads for operators
(the dashboard, `helix runners list`, /metrics) are of every registered runner, alive or gone.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

_LIVE = "last_seen > now() - make_interval(secs => %s)"

# Every registered runner with its token, and whether it is gone: silent for more than `gone_seconds`
# (HELIX_RUNNER_GONE_SECONDS, counted to a tenth of a second, as shown) or its token revoked. One
# rule for the dashboard and /metrics, so the two never disagree about a runner. Nothing else happens
# to a gone runner: the work it held is already recovered by the reconciler once its workers'
# heartbeats expire, which is sooner (shared.runners.HEARTBEAT_TTL_SECONDS).
_WITH_TOKEN = ("runners r JOIN runner_tokens t ON t.id = r.token_id CROSS JOIN LATERAL (SELECT"
               " round(greatest(0, extract(epoch FROM now() - r.last_seen)::numeric), 1)::float8 AS seconds) ago")
_GONE = "(ago.seconds > %s OR t.revoked IS NOT NULL)"


@dataclass(frozen=True)
class RunnerRow:
    """A registered runner as operators see it (runners_with_tokens)."""
    id: str
    models: dict[str, list[str]]  # by session type: the models it announced
    info: dict[str, Any]          # facts it announced (memory, max_model_len, ...)
    state: dict[str, Any]         # what it last reported (memory free, jobs, version)
    first_seen: datetime
    last_seen: datetime
    token: str                    # its runner token's name
    token_revoked: bool
    seconds_since_seen: float     # by the database's clock, to a tenth of a second
    gone: bool


def runners_with_tokens(conn: psycopg.Connection, gone_seconds: float) -> list[RunnerRow]:
    """Every registered runner, most recently heard from first."""
    with conn.cursor(row_factory=class_row(RunnerRow)) as cur:
        return cur.execute(
            "SELECT r.id, r.models, r.info, r.state, r.first_seen, r.last_seen, t.name AS token,"
            " t.revoked IS NOT NULL AS token_revoked, ago.seconds AS seconds_since_seen,"
            f" {_GONE} AS gone FROM {_WITH_TOKEN} ORDER BY r.last_seen DESC, r.id", (gone_seconds,)).fetchall()


def runner_counts(conn: psycopg.Connection, gone_seconds: float) -> dict[str, int]:
    """How many registered runners are alive and how many gone, in one pass (for /metrics)."""
    return conn.execute(
        "SELECT count(*) FILTER (WHERE NOT gone) AS alive, count(*) FILTER (WHERE gone) AS gone"
        f" FROM (SELECT {_GONE} AS gone FROM {_WITH_TOKEN}) g", (gone_seconds,)).fetchone()


def announced_models(conn: psycopg.Connection, session_type: str, seconds: float) -> list[str]:
    """The models of a type that live runners announced, by name."""
    return [row["m"] for row in conn.execute(
        f"SELECT DISTINCT jsonb_array_elements_text(models -> %s) AS m FROM runners WHERE {_LIVE} ORDER BY m",
        (session_type, seconds))]


def live_runners(conn: psycopg.Connection, model: str, session_type: str, seconds: float) -> list[dict[str, Any]]:
    """Each live runner serving `model` (as a model of `session_type`): its id and facts."""
    return conn.execute(f"SELECT id, info FROM runners WHERE models -> %s ? %s AND {_LIVE}",
                        (session_type, model, seconds)).fetchall()


def live_workers(conn: psycopg.Connection, model: str, session_type: str, worker_kinds: list[str],
                 seconds: float) -> int:
    """How many workers of these kinds the live runners serving `model` last reported."""
    return conn.execute(
        "SELECT coalesce(sum(w.value::numeric), 0)::bigint AS n FROM runners r,"
        " jsonb_each(CASE WHEN jsonb_typeof(r.state -> 'workers') = 'object' THEN r.state -> 'workers'"
        " ELSE '{}'::jsonb END) w WHERE w.key = ANY(%s) AND jsonb_typeof(w.value) = 'number'"
        f" AND r.models -> %s ? %s AND r.{_LIVE}", (worker_kinds, session_type, model, seconds),
    ).fetchone()["n"]


def smallest_context(conn: psycopg.Connection, model: str, seconds: float) -> int | None:
    """The smallest context (max_model_len) live runners of the text model announced; None: none did."""
    return conn.execute(
        "SELECT min((info ->> 'max_model_len')::numeric)::bigint AS n FROM runners WHERE models -> 'text' ? %s"
        f" AND jsonb_typeof(info -> 'max_model_len') = 'number' AND {_LIVE}", (model, seconds),
    ).fetchone()["n"]


def image_budget_infos(conn: psycopg.Connection, model: str, seconds: float) -> list[dict[str, Any]]:
    """The facts of each live runner of the image model that announced a work budget."""
    return [row["info"] for row in conn.execute(
        f"SELECT info FROM runners WHERE models -> 'image' ? %s AND info ? 'image_max_pixels' AND {_LIVE}",
        (model, seconds))]


def other_live_runners_of_token(conn: psycopg.Connection, token_id: str, runner_id: str, seconds: float) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM runners WHERE token_id = %s AND id <> %s AND {_LIVE}",
                        (token_id, runner_id, seconds)).fetchone()["n"]


def upsert_runner(conn: psycopg.Connection, runner_id: str, token_id: str, models: dict[str, list[str]],
                  info: dict[str, Any], state: dict[str, Any]) -> dict[str, Any] | None:
    """Records an announcement; None when the id belongs to another token (which keeps it)."""
    return conn.execute(
        "INSERT INTO runners (id, token_id, models, info, state) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET models = excluded.models, info = excluded.info, state = excluded.state,"
        " last_seen = now() WHERE runners.token_id = excluded.token_id RETURNING id, models, first_seen, last_seen",
        (runner_id, token_id, Jsonb(models), Jsonb(info), Jsonb(state)),
    ).fetchone()


def is_registered(conn: psycopg.Connection, runner_id: str, token_id: str) -> bool:
    return conn.execute("SELECT 1 FROM runners WHERE id = %s AND token_id = %s",
                        (runner_id, token_id)).fetchone() is not None
