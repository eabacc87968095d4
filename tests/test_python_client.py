"""The Python client (clients/python, `helix_client`) against the live server and the tiny runner:
a chat streamed token by token, sync and async; sessions listed, cancelled and deleted; files
uploaded and read back; the server's refusals raised with its message; and a 429 retried after
the wait its Retry-After asked for."""
from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from helix_client import AsyncClient, Client, HelixError, RateLimited
from helix_client.follow import Follower

from controlplane.accounts import store as accounts
from controlplane.usage import plans
from controlplane.usage.plans import Limits
from tests.conftest import TEXT_MODEL


@pytest.fixture()
def client(live_server, live_user):
    with Client(live_server, live_user.key) as c:
        yield c


def test_a_chat_streams_its_reply_and_the_parts_make_the_stored_message(client, runner):
    # Long enough to outlast the runner's 0.1 s between published pieces: 24 tokens of the tiny
    # model once arrived as one piece.
    chat = client.chat("Tell me about the sea", model=TEXT_MODEL, max_tokens=400)
    parts = list(chat)
    assert len(parts) > 1 and "".join(parts) == chat.text
    stored = client.sessions.get(chat.session_id)["interactions"][-1]
    assert stored["state"] == "complete" and stored["message"] == chat.text == chat.reply["message"]
    # The next turn of the same session.
    again = client.chat("And about rivers?", session_id=chat.session_id, max_tokens=8)
    assert again.result() and again.session_id == chat.session_id
    assert len(client.sessions.get(chat.session_id)["interactions"]) == 4


def test_the_async_client_streams_the_same_way(live_server, live_user, runner):
    async def run() -> tuple[list[str], dict]:
        async with AsyncClient(live_server, live_user.key) as c:
            parts = [p async for p in c.chat("Count to five", model=TEXT_MODEL, max_tokens=16)]
            listed = await c.sessions.list(limit=1)
            return parts, await c.sessions.get(listed["sessions"][0]["id"])

    parts, session = asyncio.run(run())
    assert parts and "".join(parts) == session["interactions"][-1]["message"]


def test_sessions_are_listed_cancelled_and_deleted(client, runner):
    session = client.sessions.create("a reply to cancel", model_name=TEXT_MODEL, max_tokens=2000)
    assert client.sessions.list(q=session["id"])["sessions"][0]["id"] == session["id"]
    cancelled = client.sessions.cancel(session["id"])["interactions"][-1]
    assert cancelled["finished"] and cancelled["status"] == "cancelled", cancelled
    client.sessions.delete(session["id"])
    with pytest.raises(HelixError) as refused:
        client.sessions.get(session["id"])
    assert refused.value.status == 404 and refused.value.message == "session not found"


def test_files_are_uploaded_listed_and_read_back(client, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("The lighthouse is painted red.")
    saved = client.upload("client-test", [notes])
    assert [f["name"] for f in saved] == ["notes.txt"]
    assert "notes.txt" in [f["name"] for f in client.files("client-test")]
    assert client.download("client-test/notes.txt") == notes.read_bytes()


def test_a_refusal_raises_the_servers_own_message(client):
    with pytest.raises(HelixError) as refused:
        client.sessions.create("hello", mode="sideways")
    assert refused.value.status == 400 and "mode" in refused.value.message
    with pytest.raises(HelixError) as no_key:
        Client("http://127.0.0.1:9", "", max_retries=0)
    assert "HELIX_API_KEY" in no_key.value.message


def test_a_429_is_retried_after_the_wait_it_asked_for(live_server, live_db):
    name = f"client-{uuid.uuid4().hex[:8]}"
    plans.set_plan(live_db, name, Limits(requests_per_minute=60))  # a bucket of 60, one back a second
    row = accounts.create_user(live_db, f"client-{uuid.uuid4().hex[:8]}@example.com", plan=name)
    key = accounts.create_api_key(live_db, row["id"], "test")[1]

    def restart_nothing(c: Client) -> None:
        """Counted at the door, then a 404: the plan's bucket empties and nothing is stored."""
        with pytest.raises(HelixError) as gone:
            c.sessions.restart("no-such-session")
        if gone.value.status != 404:
            raise gone.value

    with Client(live_server, key, max_retries=0) as impatient:
        with pytest.raises(RateLimited) as limited:
            for _ in range(100):
                restart_nothing(impatient)
    assert 0 < limited.value.retry_after <= 2 and "requests per minute" in limited.value.message
    seen: list[httpx.Response] = []
    with Client(live_server, key, max_retries=5) as patient:
        patient._http.event_hooks = {"response": [seen.append]}
        restart_nothing(patient)  # at once: at most one request back in the bucket
        started = time.monotonic()
        restart_nothing(patient)  # refused first, then let in after the wait
        waited = time.monotonic() - started
    statuses = [r.status_code for r in seen]
    assert statuses[-1] == 404 and 429 in statuses, statuses
    asked = sum(float(r.headers["retry-after-ms"]) / 1000 for r in seen[1:] if r.status_code == 429)
    assert asked > 0 and waited >= asked * 0.9, (waited, asked)


def test_the_follower_takes_each_token_once_whatever_the_order_of_events():
    follower = Follower()
    snapshot = '{"id": "s", "interactions": [{"id": "u", "message": "hi"}, {"id": "r", "message": "Hel"}]}'
    assert follower.read("session", snapshot) == "Hel"
    assert follower.read("delta", '{"interaction_id": "r", "delta": "Hello", "offset": 0}') == "lo"
    assert follower.read("delta", '{"interaction_id": "r", "delta": " world", "offset": 5}') == " world"
    assert follower.read("delta", '{"interaction_id": "other", "delta": "x", "offset": 0}') == ""
    assert follower.read("interaction", '{"id": "r", "message": "Hello world!", "finished": true,'
                                        ' "state": "complete"}') == "!"
    assert follower.done and follower.text == "Hello world!"
