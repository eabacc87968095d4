"""Helix's user websocket, GET /api/v1/ws/user?session_id=…: a session's changes as Helix's web
app watched them (sessions/helix_events.py), for as long as the client stays. The key may come as
`?access_token=` (a browser's websocket cannot send headers). Who may watch is who may read the
session (sessions/sharing.py), checked before the connection is upgraded, so a refusal is the
API's JSON error; each socket holds one of the user's live-stream slots, as an events stream does."""
from __future__ import annotations

import json

from flask import Blueprint, current_app, g, request
from flask_sock import Sock

from controlplane.accounts.auth import require_user
from controlplane.contract.operations import documented
from controlplane.errors import BadRequest
from controlplane.sessions import helix_events, sharing
from controlplane.sessions import store as sessions_store
from controlplane.sessions.views import session_view
from controlplane.storage import db

bp = Blueprint("user_socket", __name__, url_prefix="/api/v1")
sock = Sock()
# The server pings this often; a client that does not answer by the next ping is gone. Often
# enough that an idle socket is never taken for a stalled client (serving.CLIENT_IDLE_SECONDS).
PING_SECONDS = 10
SERVER_OPTIONS = {"ping_interval": PING_SECONDS, "max_message_size": 4096}


@bp.before_request
@require_user
def _may_watch():
    """Before the upgrade: the caller, the session, and a free slot, or the API's JSON error."""
    session_id = request.args.get("session_id") or ""
    if not session_id:
        raise BadRequest("name the session to watch: ?session_id=<id>")
    with db.read() as conn:
        session, _ = sharing.readable_session(conn, g.user, session_id)
    g.watched = session
    g.release = current_app.extensions["event_streams"].acquire(g.user["id"], session_id,
                                                                g.user["plan_limits"].event_streams)


@bp.teardown_request
def _give_back_slot(_error=None):
    """Also where the upgrade itself failed and the socket never ran."""
    release = g.pop("release", None)
    if release is not None:
        release()


@sock.route("/ws/user", bp=bp)
@documented("Helix's user websocket: the session's changes as WebsocketEvent messages while it stays open",
            query={"session_id": {"type": "string"}}, responses={101: "the socket is open (WebSocket upgrade)"})
def user_socket(ws):
    session = g.watched
    app, subscriptions = current_app._get_current_object(), current_app.extensions["subscriptions"]

    def read_session() -> dict | None:
        with app.app_context(), db.read() as conn:
            found = sessions_store.get_session_with_interactions(conn, session.id, None)
        return session_view(*found) if found else None

    while ws.connected:
        for message in helix_events.messages(subscriptions, session.id, session.owner, read_session):
            if not ws.connected:
                return
            if message is not None:
                ws.send(json.dumps(message, default=str))
        if read_session() is None:  # the session was deleted: nothing more will come
            return
