"""The session events stream on a real Valkey: no final state is ever lost between the
snapshot and the live events."""
from __future__ import annotations

import json

import pytest
from redis import Redis

from controlplane.sessions import events
from shared.updates import EVENT_INTERACTION


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
