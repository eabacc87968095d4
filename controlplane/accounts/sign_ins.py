"""Browsers signed in with a password: a random token in the session cookie, its digest in
PostgreSQL, so signing out (or a new password) ends it on every replica, and the key that signs
the cookies, made once and shared by every replica."""
from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import psycopg

from controlplane.accounts.store import USER_COLUMNS, digest, with_limits


def create(conn: psycopg.Connection, user_id: str, lifetime: timedelta) -> str:
    """Returns the token for the cookie; only its digest is stored."""
    token = secrets.token_urlsafe(32)
    conn.execute("INSERT INTO sign_ins (digest, user_id, expires) VALUES (%s, %s, now() + %s)",
                 (digest(token), user_id, lifetime))
    conn.execute("DELETE FROM sign_ins WHERE user_id = %s AND expires < now()", (user_id,))
    return token


def user_for_sign_in(conn: psycopg.Connection, token: str) -> dict[str, Any] | None:
    """The signed-in user, with their plan's limits (a browser has no key of its own)."""
    columns = ", ".join(f"u.{c.strip()}" for c in USER_COLUMNS.split(","))
    return with_limits(conn.execute(
        f"SELECT {columns}, u.plan, p.limits AS plan_limits FROM sign_ins s JOIN users u ON u.id = s.user_id"
        " JOIN plans p ON p.name = u.plan WHERE s.digest = %s AND s.expires > now()", (digest(token),)).fetchone())


def delete(conn: psycopg.Connection, token: str) -> None:
    conn.execute("DELETE FROM sign_ins WHERE digest = %s", (digest(token),))


def cookie_signing_key(conn: psycopg.Connection) -> str:
    """The key every replica signs cookies with: made by the first replica that asks."""
    conn.execute("INSERT INTO app_secrets (name, value) VALUES ('cookie_signing_key', %s)"
                 " ON CONFLICT (name) DO NOTHING", (secrets.token_urlsafe(48),))
    return conn.execute("SELECT value FROM app_secrets WHERE name = 'cookie_signing_key'").fetchone()["value"]
