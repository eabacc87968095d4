"""Live session events: published to Redis pub/sub, relayed to clients as server-sent events.

Any replica can publish and any replica can relay, so a client may watch a session from a
different replica than the one the runner reports to.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator

from redis import Redis

from controlplane.errors import ServiceUnavailable, TooManyRequests
from controlplane.http import event_stream
from shared.updates import EVENT_DELTA, EVENT_INTERACTION, partial_text_key, session_channel

# An idle stream writes a comment this often: a write is how a server learns that its client
# left (the first write after the client closed still succeeds, the next one fails), so a slot
# is freed within about two of these, not at the next 15-second keep-alive.
PING_SECONDS = 1.0
# An idle stream re-reads its session this often, in case the final event was missed.
KEEPALIVE_SECONDS = 15


class StreamSlots:
    """This process's live event streams: at most `total`, and at most `per_user` for one user,
    so one user holding many streams cannot answer every other user's stream with a 503."""

    def __init__(self, total: int, per_user: int):
        self.total, self.per_user = total, per_user
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, user_id: str, session_id: str | None = None) -> Callable[[], None]:
        """Takes a slot, or refuses with 429 (this user's share is used) or 503 (the process's);
        returns the slot's release, which may be called any number of times. Without a session
        (a call that would create one), the refusal says to retry instead of to poll."""
        poll = f", or poll GET /api/v1/sessions/{session_id} instead" if session_id else ""
        with self._lock:
            if self._held[user_id] >= self.per_user:
                close = "close one" if session_id else "retry once one of your open calls has finished"
                raise TooManyRequests(f"you have {self._held[user_id]} live event streams open on this server,"
                                      f" the most one user may hold: {close}{poll}")
            if sum(self._held.values()) >= self.total:
                raise ServiceUnavailable(f"too many live event streams on this server right now: retry{poll}")
            self._held[user_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._held[user_id] -= 1
                if not self._held[user_id]:
                    del self._held[user_id]

        return release


def publish(redis: Redis, session_id: str, event: str, data: dict[str, Any]) -> None:
    try:
        redis.publish(session_channel(session_id), json.dumps({"event": event, "data": data}))
    except Exception:
        pass  # live events are best effort; PostgreSQL holds the truth


def _finished(view: dict[str, Any] | None) -> bool:
    return view is None or all(i["finished"] for i in view["interactions"])


def with_streamed_text(redis: Redis, view: dict[str, Any] | None) -> dict[str, Any] | None:
    """The session with each unfinished reply's text so far as the runner streamed it (the
    stored message lags it by up to a second)."""
    if view is None:
        return view
    live = [i for i in view["interactions"] if not i["finished"]]
    if live:
        try:
            texts = redis.mget([partial_text_key(i["id"]) for i in live])
        except Exception:
            texts = [None] * len(live)  # the stored text, a little behind
        for interaction, text in zip(live, texts):
            if text is not None:
                text = text.decode("utf-8", "replace")
                if len(text) > len(interaction["message"] or ""):
                    interaction["message"] = text
    return view


def _unseen(delta: dict[str, Any], known: dict[str, int]) -> dict[str, Any] | None:
    """The part of a delta this client has not had yet (in the snapshot, or an earlier event),
    by the delta's offset in its reply; None when it had all of it."""
    offset, text = delta.get("offset"), delta.get("delta") or ""
    seen = known.get(delta.get("interaction_id"), 0)
    if not isinstance(offset, int):
        return delta  # from an older runner: no offset to place it by
    known[delta["interaction_id"]] = max(seen, offset + len(text))
    if offset + len(text) <= seen:
        return None
    if offset < seen:
        return {**delta, "delta": text[seen - offset:], "offset": seen}
    return delta


def session_events(redis: Redis, session_id: str, read_session: Callable[[], dict[str, Any] | None],
                   max_seconds: float = 3600) -> Iterator[tuple[str, Any] | None]:
    """The session as it is now (`session`), then every event as (name, data) until its last
    interaction finishes (`end`); None now and then while nothing happens, so a caller can write
    something and learn whether its client is still there.

    The snapshot is read after subscribing, so no update falls between the two, and whether the
    stream is over is judged from that same snapshot: a reply that finishes just after it still
    arrives as an event. A reply in progress comes with its text so far, and then only the
    deltas past it (by their offsets), so a client that connects mid-reply gets every token once.
    A stream that missed the final event (Redis restarted, say) re-reads the session at each
    keep-alive, sends it, and ends.
    """
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(session_channel(session_id))
    try:
        view = with_streamed_text(redis, read_session())
        yield "session", view or {"id": session_id, "interactions": []}
        if _finished(view):
            yield "end", {"session_id": session_id}
            return
        known = {i["id"]: len(i["message"] or "") for i in view["interactions"]}
        deadline = time.monotonic() + max_seconds
        last_read = time.monotonic()
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=PING_SECONDS)
            if message is None:
                if time.monotonic() - last_read >= KEEPALIVE_SECONDS:
                    view = read_session()
                    if _finished(view):
                        if view is not None:
                            yield "session", view
                        break
                    last_read = time.monotonic()
                yield None
                continue
            payload = json.loads(message["data"])
            event, data = payload["event"], payload["data"]
            if event == EVENT_DELTA:
                data = _unseen(data, known)
                if data is None:
                    continue
            elif event == EVENT_INTERACTION:
                if not data.get("finished") and len(data.get("message") or "") < known.get(data["id"], 0):
                    # A stored copy of a reply in progress: the runner stores its text through the
                    # control plane while it goes on publishing deltas straight to Redis, so the copy
                    # can arrive after deltas past it. Sent as it was, it would take a client's text
                    # back and the next delta would leave a gap: bring it up to the streamed text.
                    with_streamed_text(redis, {"interactions": [data]})
                known[data["id"]] = len(data.get("message") or "")
            yield event, data
            if event == EVENT_INTERACTION and data.get("finished"):
                break
        yield "end", {"session_id": session_id}
    finally:
        pubsub.close()


def stream(redis: Redis, session_id: str, read_session: Callable[[], dict[str, Any] | None],
           max_seconds: float = 3600) -> Iterator[str]:
    """session_events as server-sent events; an idle stream writes a comment every
    PING_SECONDS, so a client that left is noticed promptly."""
    for item in session_events(redis, session_id, read_session, max_seconds):
        yield event_stream.KEEP_ALIVE if item is None else event_stream.message(item[1], event=item[0])
