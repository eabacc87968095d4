"""Helix's user websocket (issue 20, item 3) on the live server under gunicorn's gevent worker,
with a real runner: a chat's session, tokens and result arrive as Helix's WebsocketEvent
messages, the same socket carries the next prompt's, and refusals come before the upgrade."""
from __future__ import annotations

import json

import pytest
import requests
from simple_websocket import Client, ConnectionError

from controlplane.contract import helix_types as helix


def _socket(live_server: str, session_id: str, key: str) -> Client:
    url = live_server.replace("http://", "ws://") + f"/api/v1/ws/user?session_id={session_id}&access_token={key}"
    return Client.connect(url)


def _until_result(ws: Client, timeout: float = 120) -> list[helix.WebsocketEvent]:
    """Messages until a result, then the session update that follows it."""
    got = []
    while True:
        raw = ws.receive(timeout=timeout)
        assert raw is not None, f"nothing for {timeout} s after {[m.type for m in got]}"
        got.append(helix.WebsocketEvent.model_validate(json.loads(raw)))
        if got[-1].type == "session_update" and any(m.type == "worker_task_response" and
                                                    m.worker_task_response.type == "result" for m in got):
            return got


@pytest.mark.timeout(300)
def test_a_chat_s_tokens_and_result_arrive_as_helix_s_websocket_events(live_server, runner, live_user):
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers, timeout=30,
                      data={"input": "Say hello", "mode": "inference", "type": "text", "max_tokens": "200"})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    ws = _socket(live_server, sid, live_user.key)
    try:
        first = helix.WebsocketEvent.model_validate(json.loads(ws.receive(timeout=60)))
        assert first.type == "session_update" and first.session.id == sid and first.owner == live_user.id
        if not first.session.interactions[-1].finished:  # the reply may have ended before the socket opened
            _until_result(ws)

        # Each prompt's work, told on the socket that stays open: its tokens as they come, then its
        # result and the session with it.
        for prompt in ("Again", "Once more"):
            r = requests.put(f"{live_server}/api/v1/sessions/{sid}", headers=live_user.headers, timeout=30,
                             data={"input": prompt})
            assert r.status_code == 200, r.text
            got = _until_result(ws)
            responses = [m.worker_task_response for m in got if m.type == "worker_task_response"]
            result = responses[-1]
            assert result.type == "result" and result.done and result.message
            assert result.interaction_id == r.json()["interactions"][-1]["id"]
            streamed = "".join(t.message for t in responses if t.type == "stream")
            assert streamed and result.message.startswith(streamed), (streamed, result.message)
            last = got[-1].session.interactions[-1]
            assert last.finished and last.id == result.interaction_id
    finally:
        ws.close()


def test_a_socket_is_refused_before_the_upgrade(live_server, live_user, make_live_user):
    sid = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers, timeout=30,
                        data={"input": "hi", "mode": "inference", "type": "text"}).json()["id"]
    stranger = make_live_user()
    for session_id, key, status in ((sid, "hl-wrong", 401), (sid, stranger.key, 404), ("", live_user.key, 400)):
        with pytest.raises(ConnectionError) as refused:
            _socket(live_server, session_id, key)
        assert refused.value.status_code == status, (session_id, status)
    # As a plain request, the refusal is the API's JSON error.
    r = requests.get(f"{live_server}/api/v1/ws/user?session_id={sid}", headers=stranger.headers, timeout=30)
    assert r.status_code in (400, 404) and "error" in r.json()
