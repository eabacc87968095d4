"""A session's live events in the shapes Helix's user websocket sent (its WebsocketEvent): the
whole session on every change (`session_update`), and a runner's tokens, progress and result
(`worker_task_response`, of type stream, progress or result). Made from the same live path as
the events stream (sessions/events.py), so both show the same changes in the same order."""
from __future__ import annotations

from typing import Any, Callable, Iterator

from controlplane.sessions import events
from controlplane.sessions.subscriptions import Subscriptions
from shared.updates import EVENT_DELTA, EVENT_INTERACTION

SessionReader = Callable[[], dict[str, Any] | None]


def session_update(session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session_update", "session_id": session["id"], "owner": session.get("owner", ""),
            "session": session, "worker_task_response": None}


def task_response(kind: str, session_id: str, owner: str, interaction: dict[str, Any] | None = None,
                  message: str = "") -> dict[str, Any]:
    """Helix's RunnerTaskResponse: `stream` carries the new text in `message`; `progress` and
    `result` the interaction's progress, status, files, error (and `done` for a result)."""
    turn = interaction or {}
    response = {"type": kind, "session_id": session_id, "interaction_id": turn.get("id", ""), "owner": owner,
                "message": message, "progress": turn.get("progress", 0), "status": turn.get("status", ""),
                "files": turn.get("files") or [], "lora_dir": turn.get("lora_dir", ""), "error": turn.get("error", "")}
    if kind == "result":
        response["done"] = True
    return {"type": "worker_task_response", "session_id": session_id, "owner": owner, "session": None,
            "worker_task_response": response}


# A socket's subscription is renewed this often (its client stays connected meanwhile).
SOCKET_SECONDS = 24 * 3600


def messages(subscriptions: Subscriptions, session_id: str, owner: str,
             read_session: SessionReader) -> Iterator[dict[str, Any] | None]:
    """Helix's messages for the session (None while nothing happens, so a caller can look after
    its connection): the session first, then each change, this work's and the next prompts', on
    one subscription, until the session is gone or a day has passed."""
    for item in events.session_events(subscriptions, session_id, read_session, max_seconds=SOCKET_SECONDS,
                                      follow_on=True):
        if item is None:
            yield None
            continue
        name, data = item
        if name == "session" and data.get("interactions"):
            yield session_update(data)
        elif name == EVENT_DELTA:
            yield task_response("stream", session_id, owner, {"id": data.get("interaction_id", "")},
                                message=data.get("delta") or "")
        elif name == EVENT_INTERACTION:
            finished = bool(data.get("finished"))
            yield task_response("result" if finished else "progress", session_id, owner, data,
                                message=data.get("message", "") if finished else "")
            session = read_session()
            if session is not None:
                yield session_update(session)
