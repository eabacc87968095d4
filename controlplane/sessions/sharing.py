"""Who may read a session besides its owner, as in Helix: anyone signed in while its owner has
shared it (`config.shared`), read only, its files included; and an admin, always, each such read
logged with who read what. Everyone else is told it does not exist (404, not Helix's 403: a
stranger learns nothing of another user's session ids)."""
from __future__ import annotations

import logging
from typing import Any

import psycopg

from controlplane.errors import NotFound
from controlplane.sessions import store as sessions_store
from controlplane.storage.rows import SessionRow, SessionWithInteractions

audit = logging.getLogger("helix.audit")


def may_read(user: dict[str, Any], session: SessionRow) -> bool:
    """Whether `user` may read the session: their own, a shared one, or any for an admin (logged)."""
    if session.owner == user["id"] or (session.config or {}).get("shared") is True:
        return True
    if user.get("is_admin"):
        audit.info("admin %s (%s) read session %s of user %s", user["id"], user.get("email", ""), session.id,
                   session.owner)
        return True
    return False


def readable_session(conn: psycopg.Connection, user: dict[str, Any], session_id: str) -> SessionWithInteractions:
    """The session with its interactions if `user` may read it, else 404."""
    found = sessions_store.get_session_with_interactions(conn, session_id, None)
    if found is None or not may_read(user, found[0]):
        raise NotFound("session not found")
    return found


def cloned_config(config: dict[str, Any], interaction_id: str) -> dict[str, Any]:
    """A clone's config: its source's settings and where it came from, never shared until its
    owner says so."""
    return {**{k: v for k, v in config.items() if k != "shared"}, "cloned_interaction_id": interaction_id}
