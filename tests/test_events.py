"""The session events stream on a real Valkey: no final state is ever lost between the
snapshot and the live events."""
from __future__ import annotations

import json

import pytest
from redis import Redis

from controlplane.sessions import events
from shared.updates import EVENT_DELTA, EVENT_INTERACTION, partial_text_key


def view(finished: bool, message: str = "") -> dict:
    return {"id": "s1", "interactions": [{"id": "i1", "finished": finished, "message": message}]}


def parse(chunks) -> list[tuple[str, dict]]:
    out = []
    for chunk in chunks:
        if chunk.startswith("event:"):
            name, data = chunk.split("\n")[:2]
            out.append((name[len("event: "):], json.loads(data[len("data: "):])))
    return out


@pytest.fixture()
def redis(config):
    return Redis.from_url(config.redis_url)


def test_a_reply_finishing_right_after_the_snapshot_still_arrives(redis):
    def read_session():
        # The runner's final update lands just after the snapshot was read.
        events.publish(redis, "s1", EVENT_INTERACTION, view(True, "done")["interactions"][0])
        return view(False)

    got = parse(events.stream(redis, "s1", read_session, max_seconds=10))
    assert [name for name, _ in got] == ["session", "interaction", "end"]
    assert got[1][1] == {"id": "i1", "finished": True, "message": "done"}


def test_a_finished_session_ends_at_once(redis):
    got = parse(events.stream(redis, "s1", lambda: view(True, "old"), max_seconds=10))
    assert [name for name, _ in got] == ["session", "end"]
    assert got[0][1]["interactions"][0]["message"] == "old"


def test_a_missed_final_event_is_sent_from_the_database_at_the_next_keepalive(redis, monkeypatch):
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0)
    reads = iter([view(False), view(True, "from postgres")])
    got = parse(events.stream(redis, "s1", lambda: next(reads), max_seconds=10))
    assert [name for name, _ in got] == ["session", "session", "end"]
    assert got[1][1]["interactions"][0]["message"] == "from postgres"


def test_a_session_deleted_while_followed_says_so_and_ends(redis, monkeypatch):
    """At once when the deletion's event comes; at the next keep-alive's read when it was missed."""
    def read_session():
        events.publish(redis, "s1", events.EVENT_DELETED, {"session_id": "s1"})
        return view(False)

    got = parse(events.stream(redis, "s1", read_session, max_seconds=10))
    assert [name for name, _ in got] == ["session", "deleted", "end"]
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0)
    reads = iter([view(False), None])
    got = parse(events.stream(redis, "s1", lambda: next(reads), max_seconds=10))
    assert got[1:] == [("deleted", {"session_id": "s1"}), ("end", {"session_id": "s1"})]


def test_a_stored_copy_arriving_after_later_deltas_does_not_take_the_text_back(redis):
    """The runner stores its text through the control plane while it goes on streaming deltas
    straight to Redis: the stored copy's event can come after deltas past it. Seen in a CI run
    on a loaded machine as a reply with a gap, to a client that connected mid-reply."""
    key = partial_text_key("i1")
    redis.delete(key)

    def stream(offset: int, piece: str) -> None:  # as runner/text/stream.py publishes a delta
        redis.append(key, piece)
        events.publish(redis, "s1", EVENT_DELTA, {"interaction_id": "i1", "delta": piece, "offset": offset})

    def read_session():
        stream(0, "Hello")
        stream(5, " world")
        # The copy stored when the runner had "Hello", published only now.
        events.publish(redis, "s1", EVENT_INTERACTION, view(False, "Hello")["interactions"][0])
        stream(11, ", again")
        events.publish(redis, "s1", EVENT_INTERACTION, view(True, "Hello world, again")["interactions"][0])
        return view(False)

    text = ""
    for name, data in parse(events.stream(redis, "s1", read_session, max_seconds=10)):
        if name == "delta":
            text += data["delta"]
        elif name == "interaction" and data["finished"]:
            break
        elif name == "interaction":
            text = data["message"]  # a stored copy replaces the text so far
        elif name == "session":
            text = data["interactions"][0]["message"]
    assert text == "Hello world, again"  # before the final event: was "Hello, again"
    redis.delete(key)
