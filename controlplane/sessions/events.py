"""Live session events: published to Redis pub/sub, relayed to clients as server-sent events.

Any replica can publish and any replica can relay, so a client may watch a session from a
different replica than the one the runner reports to.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from typing import Any, Callable, Iterator

from redis import Redis

from controlplane.errors import ServiceUnavailable, TooManyRequests
from controlplane.http import event_stream
from controlplane.sessions.subscriptions import RESYNC, Subscriptions
from controlplane.sessions.views import turn_messages
from shared.updates import EVENT_DELTA, EVENT_INTERACTION, partial_text_key, session_channel

log = logging.getLogger(__name__)

# An idle stream writes a comment this often: a write is how a server learns that its client
# left (the first write after the client closed still succeeds, the next one fails), so a slot
# is freed within about two of these, not at the next keep-alive. With many streams open in a
# process, the period grows so that they write at most PINGS_PER_SECOND comments a second
# together (10,000 streams: one every 5 s each).
PING_SECONDS = 1.0
PINGS_PER_SECOND = 2000
# An idle stream with work under way re-reads its session this often, in case the final event
# was missed (a lost subscription is told at once, by RESYNC); again at most
# READS_PER_SECOND reads a second for the whole process, each stream at its own moment.
KEEPALIVE_SECONDS = 15
READS_PER_SECOND = 100
# Published when a session is deleted: a stream of it says so and ends at once (a call waiting
# for its reply answers then, not at the next keep-alive's read).
EVENT_DELETED = "deleted"


# A user's live streams, counted by every replica together: a sorted set of slots, each scored by
# when its lease ends. A process renews its slots' leases while they are open; the slots of a
# process that died lapse within STREAM_LEASE_MS.
STREAM_LEASE_MS = 60_000
_TAKE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then return -held end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return held + 1
"""
_RENEW_SLOTS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
end
return #KEYS
"""


def _streams_key(user_id: str) -> str:
    return f"helix:event-streams:{user_id}"


class StreamSlots:
    """Live event streams: at most `total` in this process (each holds a connection), and at most
    `per_user` for one user across every replica (Redis), so one user holding many streams cannot
    answer every other user's stream with a 503, however many processes serve them."""

    def __init__(self, total: int, per_user: int, redis: Redis):
        self.total, self.per_user, self.redis = total, per_user, redis
        self._held: dict[str, str] = {}  # this process's slots: slot id -> user id
        self._lock = threading.Lock()
        self._take = redis.register_script(_TAKE_SLOT)
        self._renew = redis.register_script(_RENEW_SLOTS)
        self._renewer: threading.Thread | None = None

    def acquire(self, user_id: str, session_id: str | None = None, plan_limit: int | None = None) -> Callable[[], None]:
        """Takes a slot, or refuses with 429 (this user's share is used: the server's, or their
        plan's `plan_limit` when lower) or 503 (the process's); returns the slot's release, which
        may be called any number of times. Without a session (a call that would create one), the
        refusal says to retry instead of to poll."""
        poll = f", or poll GET /api/v1/sessions/{session_id} instead" if session_id else ""
        slot = uuid.uuid4().hex
        with self._lock:
            if len(self._held) >= self.total:
                raise ServiceUnavailable(f"too many live event streams on this server right now: retry{poll}")
            self._held[slot] = user_id
        try:
            limit = min(self.per_user, plan_limit or self.per_user)
            taken = int(self._take(keys=[_streams_key(user_id)], args=[limit, slot, STREAM_LEASE_MS]))
        except BaseException:
            with self._lock:
                self._held.pop(slot, None)
            raise
        if taken < 0:
            with self._lock:
                self._held.pop(slot, None)
            close = "close one" if session_id else "retry once one of your open calls has finished"
            raise TooManyRequests(f"you have {-taken} live event streams open, the most one user may hold:"
                                  f" {close}{poll}")
        self._start_renewing()

        def release() -> None:
            with self._lock:
                if self._held.pop(slot, None) is None:
                    return
            try:
                self.redis.zrem(_streams_key(user_id), slot)
            except Exception:
                log.warning("could not give back a live stream's slot: it lapses within %d s", STREAM_LEASE_MS // 1000)

        return release

    def _start_renewing(self) -> None:
        with self._lock:
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_forever, name="stream-slot-leases", daemon=True)
                self._renewer.start()

    def _renew_forever(self) -> None:
        while True:
            time.sleep(STREAM_LEASE_MS / 3000)
            with self._lock:
                held = list(self._held.items())
            for start in range(0, len(held), 500):
                batch = held[start:start + 500]
                try:
                    self._renew(keys=[_streams_key(user) for _, user in batch],
                                args=[STREAM_LEASE_MS] + [slot for slot, _ in batch])
                except Exception:
                    log.warning("could not renew live streams' slots", exc_info=True)


def publish(redis: Redis, session_id: str, event: str, data: dict[str, Any]) -> None:
    try:
        redis.publish(session_channel(session_id), json.dumps({"event": event, "data": data}))
    except Exception:
        pass  # live events are best effort; PostgreSQL holds the truth


def _finished(view: dict[str, Any] | None) -> bool:
    return view is None or all(i["finished"] for i in view["interactions"])


def streams_text(interaction: dict[str, Any]) -> bool:
    """An unfinished reply whose text so far the runner streams through Redis: it grows with no
    write to PostgreSQL, which stores it only now and then (runner/text/stream.py)."""
    return not interaction["finished"] and interaction.get("mode") == "inference"


def with_streamed_text(redis: Redis, view: dict[str, Any] | None) -> dict[str, Any] | None:
    """The session with each unfinished reply's text so far as the runner streamed it (the
    stored message lags it by up to HELIX_PERSIST_INTERVAL)."""
    if view is None:
        return view
    live = [i for i in view["interactions"] if streams_text(i)]
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
                    if "messages" in interaction:
                        interaction["messages"] = turn_messages(interaction["creator"], text)
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


def _missed_end(interaction: dict[str, Any], known: dict[str, int]) -> tuple[str, dict[str, Any]] | None:
    """A finished reply's text past what its deltas brought this client, as one more delta: the
    deltas it missed (a lost subscription, a delta the runner could not publish, a read that found
    the reply finished before its last deltas came) would otherwise leave a client that adds up
    deltas short of the final message. None where the client had none of the reply's text yet
    (it takes the final message whole) or had all of it."""
    message, seen = interaction.get("message") or "", known.get(interaction["id"], 0)
    if interaction.get("mode") != "inference" or not 0 < seen < len(message):
        return None
    return EVENT_DELTA, {"interaction_id": interaction["id"], "delta": message[seen:], "offset": seen}


def session_events(subscriptions: Subscriptions, session_id: str, read_session: Callable[[], dict[str, Any] | None],
                   max_seconds: float = 3600, follow_on: bool = False) -> Iterator[tuple[str, Any] | None]:
    """The session as it is now (`session`), then every event as (name, data) until its last
    interaction finishes (`end`); None now and then while nothing happens, so a caller can write
    something and learn whether its client is still there.

    The snapshot is read once the subscription is confirmed, so no update falls between the two,
    and whether the stream is over is judged from that same snapshot: a reply that finishes just
    after it still arrives as an event. A reply in progress comes with its text so far, and then
    only the deltas past it (by their offsets), so a client that connects mid-reply gets every
    token once; its deltas add up to the final message even where some were missed (the missing
    end comes as one more delta before the reply's final event). Where messages may have been
    missed (the subscription's connection was lost and made again), the session is read again
    and sent whole, and ends the stream if its work is done; a stream that missed the final
    event some other way learns it at a keep-alive's read.

    `follow_on`: it does not end when the work does, but goes on with the next prompt's, on the
    same subscription, so that nothing published between two pieces of work is missed (Helix's
    user websocket); it ends at `max_seconds` or once the session is gone.

    A session deleted meanwhile: `deleted`, then `end`.
    """
    redis = subscriptions.redis
    with subscriptions.listen(session_channel(session_id)) as listener:
        view = with_streamed_text(redis, read_session())
        yield "session", view or {"id": session_id, "interactions": []}
        if view is None or (_finished(view) and not follow_on):
            yield "end", {"session_id": session_id}
            return
        known = {i["id"]: len(i["message"] or "") for i in view["interactions"]}
        working = not _finished(view)  # some work of the session has not been seen to end
        unfinished = {i["id"] for i in view["interactions"] if not i["finished"]}
        told_by_reading: set[str] = set()  # replies a read found finished before their own event came
        deadline = time.monotonic() + max_seconds
        # The first keep-alive's read falls anywhere in its period, so streams opened together
        # do not all read at once.
        next_read = time.monotonic() + random.uniform(0, _period(KEEPALIVE_SECONDS, subscriptions, READS_PER_SECOND))
        while time.monotonic() < deadline:
            message = listener.get(timeout=_period(PING_SECONDS, subscriptions, PINGS_PER_SECOND))
            if message is None or message is RESYNC:
                if message is RESYNC or (working and time.monotonic() >= next_read):
                    view = with_streamed_text(redis, read_session())
                    if view is None:
                        yield EVENT_DELETED, {"session_id": session_id}
                        break
                    # A reply the read finds finished is told as its own event would have told
                    # it (which may still be on its way: it is not told twice), so a client sees
                    # every reply end the same way.
                    for interaction in view["interactions"]:
                        if interaction["finished"] and interaction["id"] in unfinished:
                            unfinished.discard(interaction["id"])
                            told_by_reading.add(interaction["id"])
                            if missed := _missed_end(interaction, known):
                                yield missed
                            yield EVENT_INTERACTION, interaction
                    finished = _finished(view)
                    if finished or message is RESYNC:
                        yield "session", view
                        known = {i["id"]: len(i["message"] or "") for i in view["interactions"]}
                    if finished and not follow_on:
                        break
                    working = not finished
                    next_read = time.monotonic() + _period(KEEPALIVE_SECONDS, subscriptions, READS_PER_SECOND)
                if message is None:
                    yield None
                continue
            payload = json.loads(message)
            event, data = payload["event"], payload["data"]
            if event == EVENT_DELTA:
                data = _unseen(data, known)
                if data is None:
                    continue
                working = True
            elif event == EVENT_INTERACTION:
                if data.get("finished") and data["id"] in told_by_reading:
                    told_by_reading.discard(data["id"])
                    continue
                if not data.get("finished") and len(data.get("message") or "") < known.get(data["id"], 0):
                    # A stored copy of a reply in progress: the runner stores its text through the
                    # control plane while it goes on publishing deltas straight to Redis, so the copy
                    # can arrive after deltas past it. Sent as it was, it would take a client's text
                    # back and the next delta would leave a gap: bring it up to the streamed text.
                    with_streamed_text(redis, {"interactions": [data]})
                if data.get("finished") and (missed := _missed_end(data, known)):
                    yield missed
                known[data["id"]] = len(data.get("message") or "")
                working = not data.get("finished")
                if working:
                    unfinished.add(data["id"])
                else:
                    unfinished.discard(data["id"])
            yield event, data
            if event == EVENT_DELETED or (event == EVENT_INTERACTION and data.get("finished") and not follow_on):
                break
        yield "end", {"session_id": session_id}


def _period(least: float, subscriptions: Subscriptions, per_second: int) -> float:
    """`least` seconds, or longer where this process's streams together would do something more
    than `per_second` times a second."""
    return max(least, subscriptions.count / per_second)


def stream(subscriptions: Subscriptions, session_id: str, read_session: Callable[[], dict[str, Any] | None],
           max_seconds: float = 3600) -> Iterator[str]:
    """session_events as server-sent events; an idle stream writes a comment every
    PING_SECONDS or so, so a client that left is noticed promptly."""
    for item in session_events(subscriptions, session_id, read_session, max_seconds):
        yield event_stream.KEEP_ALIVE if item is None else event_stream.message(item[1], event=item[0])
