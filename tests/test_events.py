"""The session events stream on a real Valkey: no final state is ever lost between the
snapshot and the live events."""
from __future__ import annotations

import json
import time

import pytest
from redis import Redis

from controlplane.sessions import events
from controlplane.sessions.subscriptions import CLIENT_NAME, Subscriptions
from shared.updates import EVENT_DELTA, EVENT_INTERACTION, partial_text_key


def view(finished: bool, message: str = "") -> dict:
    return {"id": "s1", "interactions": [{"id": "i1", "finished": finished, "message": message, "mode": "inference",
                                          "creator": "system"}]}


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


@pytest.fixture()
def subscriptions(config, redis):
    return Subscriptions(config.redis_url, redis)


def test_a_reply_finishing_right_after_the_snapshot_still_arrives(redis, subscriptions):
    def read_session():
        # The runner's final update lands just after the snapshot was read.
        events.publish(redis, "s1", EVENT_INTERACTION, view(True, "done")["interactions"][0])
        return view(False)

    got = parse(events.stream(subscriptions, "s1", read_session, max_seconds=10))
    assert [name for name, _ in got] == ["session", "interaction", "end"]
    assert got[1][1] == view(True, "done")["interactions"][0]


def test_a_finished_session_ends_at_once(redis, subscriptions):
    got = parse(events.stream(subscriptions, "s1", lambda: view(True, "old"), max_seconds=10))
    assert [name for name, _ in got] == ["session", "end"]
    assert got[0][1]["interactions"][0]["message"] == "old"


def test_a_missed_final_event_is_sent_from_the_database_at_the_next_keepalive(redis, subscriptions, monkeypatch):
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0)
    reads = iter([view(False), view(True, "from postgres")])
    got = parse(events.stream(subscriptions, "s1", lambda: next(reads), max_seconds=10))
    # Told as the missed event would have told it, then the whole session.
    assert [name for name, _ in got] == ["session", "interaction", "session", "end"]
    assert got[1][1] == view(True, "from postgres")["interactions"][0]
    assert got[2][1]["interactions"][0]["message"] == "from postgres"


def test_a_session_deleted_while_followed_says_so_and_ends(redis, subscriptions, monkeypatch):
    """At once when the deletion's event comes; at the next keep-alive's read when it was missed."""
    def read_session():
        events.publish(redis, "s1", events.EVENT_DELETED, {"session_id": "s1"})
        return view(False)

    got = parse(events.stream(subscriptions, "s1", read_session, max_seconds=10))
    assert [name for name, _ in got] == ["session", "deleted", "end"]
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0)
    reads = iter([view(False), None])
    got = parse(events.stream(subscriptions, "s1", lambda: next(reads), max_seconds=10))
    assert got[1:] == [("deleted", {"session_id": "s1"}), ("end", {"session_id": "s1"})]


def test_a_stored_copy_arriving_after_later_deltas_does_not_take_the_text_back(redis, subscriptions):
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
    for name, data in parse(events.stream(subscriptions, "s1", read_session, max_seconds=10)):
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


def _added_up(got: list[tuple[str, dict]]) -> tuple[str, dict]:
    """A client's text as it adds up deltas from the snapshot, and the reply's final event."""
    text = ""
    for name, data in got:
        if name == "session":
            text = data["interactions"][0]["message"]
        elif name == "delta":
            text += data["delta"]
        elif name == "interaction" and data["finished"]:
            return text, data
    raise AssertionError(got)


def test_deltas_add_up_to_the_final_message_even_when_the_last_ones_never_came(redis, subscriptions, monkeypatch):
    """A client connected mid-reply saw the final event with its deltas short of the message
    (3,812 of 5,842 characters, in a CI run on a loaded machine): the missing end now comes as
    one more delta, whether the final event came live or a keep-alive's read found it."""
    def read_session():
        events.publish(redis, "s1", EVENT_DELTA, {"interaction_id": "i1", "delta": " world", "offset": 5})
        # ", again" was streamed but its delta never reached this stream.
        events.publish(redis, "s1", EVENT_INTERACTION, view(True, "Hello world, again")["interactions"][0])
        return view(False, "Hello")

    got = parse(events.stream(subscriptions, "s1", read_session, max_seconds=10))
    assert [name for name, _ in got] == ["session", "delta", "delta", "interaction", "end"]
    assert got[2][1] == {"interaction_id": "i1", "delta": ", again", "offset": 11}
    text, final = _added_up(got)
    assert text == final["message"] == "Hello world, again"

    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0)  # the final event is missed: a read finds it
    reads = iter([view(False, "Hello"), view(True, "Hello world, again")])
    text, final = _added_up(parse(events.stream(subscriptions, "s1", lambda: next(reads), max_seconds=10)))
    assert text == final["message"] == "Hello world, again"


def _live_event_clients(redis) -> list[dict]:
    return [c for c in redis.client_list() if c.get("name") == CLIENT_NAME]


def _until(check, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.02)
    return found


def test_every_stream_of_a_process_shares_one_subscription(redis, subscriptions):
    """One Redis connection for a process's streams, however many: 10,000 streams were 10,000
    Redis clients, past Valkey's default maxclients."""
    listeners = [subscriptions.listen(f"test-share-{i}") for i in range(50)]
    try:
        holding = [c for c in _live_event_clients(redis) if int(c["sub"]) == 50]
        assert len(holding) == 1
        assert subscriptions.count == 50
        redis.publish("test-share-7", "for seven")
        assert listeners[7].get(timeout=5) == b"for seven"
        assert all(listener.get(timeout=0) is None for listener in listeners)
        twin = subscriptions.listen("test-share-7")  # a second stream of the same session
        redis.publish("test-share-7", "for both")
        assert listeners[7].get(timeout=5) == twin.get(timeout=5) == b"for both"
        twin.close()
    finally:
        for listener in listeners:
            listener.close()
    assert subscriptions.count == 0
    _until(lambda: [c for c in _live_event_clients(redis) if c["id"] == holding[0]["id"] and c["sub"] == "0"])


def test_a_lost_subscription_is_made_again_and_its_streams_read_their_session(redis, subscriptions, monkeypatch):
    """The connection the streams share is killed: each stream reads its session again at once
    (not at a keep-alive, here an hour away) and live events flow again on the new connection."""
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 3600)
    reads = iter([view(False, "Hel"), view(False, "Hello, while nobody listened")])
    followed = events.session_events(subscriptions, "s-lost", lambda: next(reads), max_seconds=60, follow_on=True)
    assert next(followed)[0] == "session"  # subscribed and confirmed
    for client in _live_event_clients(redis):
        redis.client_kill_filter(_id=client["id"])
    name, data = next(item for item in followed if item is not None)
    assert (name, data["interactions"][0]["message"]) == ("session", "Hello, while nobody listened")
    events.publish(redis, "s-lost", EVENT_INTERACTION, view(True, "Hello, again")["interactions"][0])
    name, data = next(item for item in followed if item is not None)
    assert (name, data["message"]) == ("interaction", "Hello, again")
    followed.close()


def test_a_reply_a_read_found_finished_is_not_told_again_when_its_own_event_comes(redis, subscriptions,
                                                                                   monkeypatch):
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0)
    reads = iter([view(False), view(True, "done")])
    followed = events.session_events(subscriptions, "s-late", lambda: next(reads), max_seconds=60, follow_on=True)
    told = [next(followed)] + [next(item for item in followed if item is not None) for _ in range(2)]
    assert [name for name, _ in told] == ["session", "interaction", "session"]
    events.publish(redis, "s-late", EVENT_INTERACTION, view(True, "done")["interactions"][0])  # its own, late
    events.publish(redis, "s-late", EVENT_INTERACTION, {"id": "i2", "finished": False, "message": ""})
    name, data = next(item for item in followed if item is not None)
    assert (name, data["id"]) == ("interaction", "i2")
    followed.close()
