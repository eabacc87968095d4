"""Live session events: published to Redis pub/sub, relayed to clients as server-sent events.

Any replica can publish and any replica can relay, so a client may watch a session from a
different replica than the one the runner reports to.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator

from redis import Redis

from shared.updates import session_channel

KEEPALIVE_SECONDS = 15


def publish(redis: Redis, session_id: str, event: str, data: dict[str, Any]) -> None:
    try:
        redis.publish(session_channel(session_id), json.dumps({"event": event, "data": data}))
    except Exception:
        pass  # live events are best effort; PostgreSQL holds the truth


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def _finished(view: dict[str, Any] | None) -> bool:
    return view is None or all(i["finished"] for i in view["interactions"])


def stream(redis: Redis, session_id: str, read_session: Callable[[], dict[str, Any] | None],
           max_seconds: float = 3600) -> Iterator[str]:
    """Yields the session as it is now, then every event until its last interaction finishes.

    The snapshot is read after subscribing, so no update falls between the two (one may appear
    in both), and whether the stream is over is judged from that same snapshot: a reply that
    finishes just after it still arrives as an event. A stream that missed the final event
    (Redis restarted, say) re-reads the session at each keep-alive, sends it, and ends.
    """
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(session_channel(session_id))
    try:
        view = read_session()
        yield sse("session", view or {"id": session_id, "interactions": []})
        if _finished(view):
            yield sse("end", {"session_id": session_id})
            return
        deadline = time.monotonic() + max_seconds
        last_sent = time.monotonic()
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                if time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                    view = read_session()
                    if _finished(view):
                        if view is not None:
                            yield sse("session", view)
                        break
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            payload = json.loads(message["data"])
            yield sse(payload["event"], payload["data"])
            last_sent = time.monotonic()
            if payload["event"] == "interaction" and payload["data"].get("finished"):
                break
        yield sse("end", {"session_id": session_id})
    finally:
        pubsub.close()
