"""Event streams under gunicorn: each user gets a fair share of a process's stream slots, and a
slot is free again as soon as its client has gone."""
from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import start_control_plane


MODEL = "helix/no-runner-serves-this"  # the sessions stay unfinished, so their streams stay open


@pytest.fixture(scope="module")
def stream_server(services, tmp_path_factory):
    """One gunicorn process with room for 3 streams, 2 of them for any one user."""
    url, proc = start_control_plane(
        services, tmp_path_factory.mktemp("stream-server"), HELIX_TEXT_MODELS=MODEL, HELIX_MAX_EVENT_STREAMS="3",
        HELIX_MAX_EVENT_STREAMS_PER_USER="2")
    yield url
    proc.stop()


def open_stream(base_url, user) -> requests.Response:
    session = requests.post(f"{base_url}/api/v1/sessions", headers=user.headers,
                            data={"input": "hi", "mode": "inference", "type": "text"}).json()
    return requests.get(f"{base_url}/api/v1/sessions/{session['id']}/events", headers=user.headers,
                        stream=True, timeout=30)


def test_one_user_cannot_take_every_stream_and_a_closed_stream_frees_its_slot(stream_server, make_live_user):
    alice, bob, carol = make_live_user(), make_live_user(), make_live_user()
    held = [open_stream(stream_server, alice) for _ in range(2)]
    try:  # (no assertion message reads a stream's body: it never ends)
        assert [r.status_code for r in held] == [200, 200]
        extra = open_stream(stream_server, alice)
        assert extra.status_code == 429  # was 200: one user could hold every slot
        assert "the most one user may hold" in extra.json()["error"]
        held.append(open_stream(stream_server, bob))
        assert held[-1].status_code == 200  # was 503 once alice held them all
        full = open_stream(stream_server, carol)
        assert full.status_code == 503 and "too many live event streams" in full.json()["error"]

        held.pop(0).close()  # alice's client goes away without a word
        left = time.monotonic()
        while (r := open_stream(stream_server, carol)).status_code != 200:
            assert r.status_code == 503
            assert time.monotonic() - left < 5, "the slot of a client that left was not freed"  # was 16-30 s
            time.sleep(0.2)
        held.append(r)
        assert next(r.iter_lines(decode_unicode=True)).startswith("event: session")
    finally:
        for r in held:
            r.close()
