"""An owner's plan limits where no request carries them (fair share's decisions, a few per job,
often on a runner's report): read from PostgreSQL, remembered per process for as long as a key
is (accounts/auth.py), so a plan change reaches them within seconds too."""
from __future__ import annotations

import threading

import psycopg
from cachetools import TTLCache

from controlplane.usage.plans import Limits, limits_from

OWNER_LIMITS_SECONDS = 5
_owner_limits: TTLCache = TTLCache(maxsize=10_000, ttl=OWNER_LIMITS_SECONDS)
_owner_limits_lock = threading.Lock()


def limits_of_owner(conn: psycopg.Connection, owner: str) -> Limits:
    """The limits of the owner's plan (unlimited for an owner that no longer exists)."""
    with _owner_limits_lock:
        found = _owner_limits.get(owner)
    if found is None:
        row = conn.execute("SELECT p.limits FROM users u JOIN plans p ON p.name = u.plan WHERE u.id = %s",
                           (owner,)).fetchone()
        found = limits_from(row["limits"] if row else None)
        with _owner_limits_lock:
            _owner_limits[owner] = found
    return found
