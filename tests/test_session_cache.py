"""The status poll's per-process copy (controlplane/sessions/cache.py): polls of an unchanged
session cost no query, and no poll ever shows a session older than a write committed before it
was sent, whichever connection, process or worker made the write."""
from __future__ import annotations

import logging
import time

import psycopg
import pytest
import requests
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from controlplane.config import Config
from controlplane.sessions.cache import APPLICATION_NAME
from shared.settings import SettingError
from tests.conftest import app_with


def _copies() -> float:
    return REGISTRY.get_sample_value("helix_status_polls_total", {"answered_from": "copy"}) or 0.0


def _finished_session(client, user, db) -> str:
    """A chat session whose reply is done: nothing about it changes unless written."""
    sid = client.post("/api/v1/sessions", data={"mode": "inference", "type": "text", "input": "hi"},
                      headers=user.headers).get_json()["id"]
    db.execute("UPDATE interactions SET state = 'complete', finished = true, message = 'hello'"
               " WHERE session_id = %s AND creator = 'system'", (sid,))
    return sid


def _poll_until_copied(client, user, sid: str, timeout: float = 10) -> dict:
    """Polls until an answer comes from the copy (the listener connects in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _copies()
        body = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()
        if _copies() > before:
            return body
        time.sleep(0.05)
    raise AssertionError("no poll was answered from the copy")


def test_polls_of_an_unchanged_session_come_from_the_copy(client, user, db):
    sid = _finished_session(client, user, db)
    first = _poll_until_copied(client, user, sid)
    before = _copies()
    for _ in range(20):
        assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json() == first
    assert _copies() - before == 20
    assert first["interactions"][-1]["message"] == "hello"


def test_no_poll_is_older_than_a_write_committed_before_it(client, user, db):
    """Another connection writes, then the poll is sent at once: 300 times, never the old answer
    (without the sync on the listening connection, about one poll in twelve was)."""
    sid = _finished_session(client, user, db)
    _poll_until_copied(client, user, sid)
    copied = 0
    for i in range(300):
        before = _copies()
        client.get(f"/api/v1/sessions/{sid}", headers=user.headers)  # keeps the copy filled
        copied += _copies() > before
        db.execute("UPDATE interactions SET message = %s WHERE session_id = %s AND creator = 'system'",
                   (f"reply {i}", sid))
        got = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()
        assert got["interactions"][-1]["message"] == f"reply {i}", f"poll {i} showed an older answer"
    assert copied > 250  # the copy was really in use between the writes


def test_every_kind_of_write_is_heard(client, user, db):
    """Sessions, interactions and question/answer pairs all feed the answer; a deleted session is 404."""
    sid = _finished_session(client, user, db)
    _poll_until_copied(client, user, sid)
    db.execute("UPDATE sessions SET name = 'renamed' WHERE id = %s", (sid,))
    assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()["name"] == "renamed"
    assert client.delete(f"/api/v1/sessions/{sid}", headers=user.headers).status_code == 200
    assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).status_code == 404


def test_another_user_never_gets_the_copy(client, make_user, db):
    owner, other = make_user(), make_user()
    sid = _finished_session(client, owner, db)
    _poll_until_copied(client, owner, sid)
    response = client.get(f"/api/v1/sessions/{sid}", headers=other.headers)
    assert response.status_code == 404


def _requests_answered(route: str = "/api/v1/sessions/<session_id>") -> float:
    return REGISTRY.get_sample_value("helix_http_requests_total",
                                     {"method": "GET", "route": route, "status": "200"}) or 0.0


def test_a_remembered_keys_poll_is_answered_before_flask(client, make_user, db, monkeypatch):
    """controlplane/api/poll_shortcut.py: the same bytes and headers as Flask's answer, counted in the
    same metrics; another user, a query string or a deleted key go to Flask as before."""
    owner, other = make_user(), make_user()
    sid = _finished_session(client, owner, db)
    _poll_until_copied(client, owner, sid)
    shortcut = client.application.wsgi_app
    reached_flask = []
    flask_wsgi = shortcut.flask_wsgi
    monkeypatch.setattr(shortcut, "flask_wsgi", lambda environ, start: reached_flask.append(
        (environ["PATH_INFO"], environ["QUERY_STRING"])) or flask_wsgi(environ, start))
    path = f"/api/v1/sessions/{sid}"

    by_flask = client.get(path + "?from=flask", headers=owner.headers)  # the view answers from the copy too
    assert reached_flask == [(path, "from=flask")] and by_flask.status_code == 200
    copies, answered = _copies(), _requests_answered()
    for _ in range(10):
        shortcut_answer = client.get(path, headers=owner.headers)
        assert shortcut_answer.status_code == 200 and shortcut_answer.data == by_flask.data
    assert len(reached_flask) == 1
    assert (_copies() - copies, _requests_answered() - answered) == (10, 10)
    assert sorted(shortcut_answer.headers.keys()) == sorted(by_flask.headers.keys())
    assert shortcut_answer.headers["Content-Type"] == by_flask.headers["Content-Type"] == "application/json"
    assert client.get(path, headers={**owner.headers, "X-Request-Id": "trace-7"}).headers["X-Request-Id"] == "trace-7"
    fresh = client.get(path, headers={**owner.headers, "X-Request-Id": "bad id!"}).headers["X-Request-Id"]
    assert len(fresh) == 32 and len(reached_flask) == 1

    # Another user's key, remembered by this process, never gets the owner's copy.
    assert client.get("/api/v1/sessions", headers=other.headers).status_code == 200
    assert client.get(path, headers=other.headers).status_code == 404
    # A deleted key is refused at once, though it was remembered.
    assert client.delete("/api/v1/api_keys", query_string={"key": owner.key}, headers=owner.headers).status_code == 200
    refused = client.get(path, headers=owner.headers)
    assert refused.status_code == 401 and "not valid" in refused.get_json()["error"]
    assert reached_flask[1:] == [("/api/v1/sessions", ""), (path, ""), ("/api/v1/api_keys", f"key={owner.key}"),
                                 (path, "")]


def test_a_queued_interaction_is_read_each_poll(client, user):
    """Its place in the queue changes with no write to announce it."""
    sid = client.post("/api/v1/sessions", data={"mode": "inference", "type": "text", "input": "hi"},
                      headers=user.headers).get_json()["id"]
    before = _copies()
    for _ in range(5):
        turn = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()["interactions"][-1]
        assert "queue_position" in turn
        time.sleep(0.05)
    assert _copies() == before


def test_a_reply_in_progress_shows_its_streamed_text_at_each_poll(client, user, config, db):
    """The runner streams a reply's text through Redis and stores it in PostgreSQL only now and
    then: a poll shows the text as streamed, and is never answered from the copy meanwhile."""
    from redis import Redis

    from shared.updates import partial_text_key
    from tests.conftest import hold_job

    sid = client.post("/api/v1/sessions", data={"mode": "inference", "type": "text", "input": "hi"},
                      headers=user.headers).get_json()["id"]
    reply = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()["interactions"][-1]
    hold_job(config.redis_url, reply["id"], "runner-streaming")  # a runner's worker took it
    db.execute("UPDATE interactions SET message = 'Once' WHERE id = %s", (reply["id"],))  # stored a while ago
    redis = Redis.from_url(config.redis_url)
    before = _copies()
    for text in ("Once upon", "Once upon a time", "Once upon a time, a lighthouse"):
        redis.set(partial_text_key(reply["id"]), text)
        turn = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()["interactions"][-1]
        assert "queue_position" not in turn
        assert turn["message"] == text and turn["messages"] == [{"role": "assistant", "content": text}]
    assert _copies() == before
    # Once finished, the stored text is the reply, and the answer is kept again.
    db.execute("UPDATE interactions SET message = 'The end.', state = 'complete', finished = true WHERE id = %s",
               (reply["id"],))
    assert _poll_until_copied(client, user, sid)["interactions"][-1]["message"] == "The end."


def _kill_listener(db) -> int:
    return db.execute("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
                      " WHERE application_name = %s", (APPLICATION_NAME,)).fetchone()["n"]


def test_a_lost_listener_loses_no_write(client, user, db):
    """Writes made while the listener is away are not announced to it: its copy is emptied, polls
    read PostgreSQL meanwhile, and the copy is used again once it listens again."""
    sid = _finished_session(client, user, db)
    _poll_until_copied(client, user, sid)
    assert _kill_listener(db) >= 1
    db.execute("UPDATE interactions SET message = 'written while away' WHERE session_id = %s"
               " AND creator = 'system'", (sid,))
    for _ in range(20):
        got = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()
        assert got["interactions"][-1]["message"] == "written while away"
    assert _poll_until_copied(client, user, sid)["interactions"][-1]["message"] == "written while away"


def test_with_every_request_logged_a_shortcut_poll_is_logged_too(config, user, db, tmp_path_factory, caplog):
    client = app_with(config, tmp_path_factory, access_log="all").test_client()
    sid = _finished_session(client, user, db)
    _poll_until_copied(client, user, sid)
    caplog.set_level(logging.INFO, logger="helix.access")
    before = _copies()
    client.get(f"/api/v1/sessions/{sid}", headers={**user.headers, "X-Request-Id": "trace-9"})
    assert _copies() == before + 1
    logged, = (r for r in caplog.records if r.name == "helix.access" and getattr(r, "request_id", "") == "trace-9")
    assert (logged.session_id, logged.status, logged.route) == (sid, 200, "/api/v1/sessions/<session_id>")
    assert logged.path == f"/api/v1/sessions/{sid}" and logged.duration_ms >= 0


def test_a_large_answer_is_not_kept(config, user, db, tmp_path_factory):
    """No answer takes more than a sixteenth of HELIX_SESSION_CACHE_MB."""
    app = app_with(config, tmp_path_factory, session_cache_mb=1)
    client = app.test_client()
    sid = _finished_session(client, user, db)
    db.execute("UPDATE interactions SET message = %s WHERE session_id = %s AND creator = 'system'",
               ("x" * 100_000, sid))
    before = _copies()
    for _ in range(10):
        assert len(client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()
                   ["interactions"][-1]["message"]) == 100_000
        time.sleep(0.05)
    assert _copies() == before
    app.extensions["session_cache"].stop()


def test_the_copy_can_be_turned_off(config, user, db, tmp_path_factory):
    app = app_with(config, tmp_path_factory, session_cache_mb=0)
    client = app.test_client()
    sid = _finished_session(client, user, db)
    before = _copies()
    for _ in range(10):
        assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).status_code == 200
        time.sleep(0.02)
    assert _copies() == before
    with pytest.raises(SettingError, match="HELIX_SESSION_CACHE_MB"):
        Config.from_env({"HELIX_SESSION_CACHE_MB": "-1"})


def test_gunicorn_workers_never_serve_an_older_answer(live_server, live_user, live_db):
    """The served path: gevent workers (two, as `make run`), a write from outside, then polls on
    fresh connections, which land on either worker."""
    http = requests.Session()
    sid = http.post(f"{live_server}/api/v1/sessions", data={"mode": "inference", "type": "text", "input": "hi"},
                    headers=live_user.headers).json()["id"]
    live_db.execute("UPDATE interactions SET state = 'complete', finished = true, message = 'first'"
                    " WHERE session_id = %s AND creator = 'system'", (sid,))
    for _ in range(20):  # fill both workers' copies
        assert requests.get(f"{live_server}/api/v1/sessions/{sid}", headers=live_user.headers).status_code == 200
    copied_before = _served_copies(live_server)
    with psycopg.connect(live_db.info.dsn, autocommit=True) as writer:
        for i in range(150):
            writer.execute("UPDATE interactions SET message = %s WHERE session_id = %s AND creator = 'system'",
                           (f"reply {i}", sid))
            got = requests.get(f"{live_server}/api/v1/sessions/{sid}", headers=live_user.headers).json()
            assert got["interactions"][-1]["message"] == f"reply {i}", f"poll {i} showed an older answer"
            for _ in range(2):  # unchanged since: these come from the copy
                requests.get(f"{live_server}/api/v1/sessions/{sid}", headers=live_user.headers)
    assert _served_copies(live_server) - copied_before > 150


def _served_copies(base_url: str) -> float:
    """The server's count of polls answered from a copy, summed over its workers (/metrics)."""
    for family in text_string_to_metric_families(requests.get(f"{base_url}/metrics").text):
        if family.name == "helix_status_polls":
            return sum(s.value for s in family.samples
                       if s.name.endswith("_total") and s.labels.get("answered_from") == "copy")
    return 0.0
