"""Cancelling and restarting a session's work: a queued job leaves its queue, a running one stops
on its runner within a second or two, a restarted interaction runs again, and each is safe to
repeat; another user's session does not exist for the caller."""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from psycopg.rows import dict_row
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from controlplane.sessions import store as sessions_store
from shared.jobs import WorkKind, job_id_for, queue_name
from tests.conftest import app_with, freeze, thaw, vllm_server, wait_for_session


@pytest.fixture(scope="module")
def unserved(config, tmp_path_factory):
    """An in-process app whose text model no runner serves: its jobs stay queued."""
    model = f"helix/unserved-{uuid.uuid4().hex[:8]}"
    app = app_with(config, tmp_path_factory, text_models=[model])
    return app, model


def _queued_ids(config, model: str) -> list[str]:
    queue = Queue(queue_name(WorkKind.TEXT_INFERENCE, model), connection=Redis.from_url(config.redis_url),
                  serializer=JSONSerializer)
    return queue.get_job_ids()


def _chat(client, user, text: str = "hello") -> dict:
    r = client.post("/api/v1/sessions", headers=user.headers, data={"input": text, "mode": "inference", "type": "text"})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def test_a_queued_job_is_cancelled_then_restarted_and_both_repeat_safely(unserved, config, make_user):
    app, model = unserved
    client, user = app.test_client(), make_user()
    s = _chat(client, user)
    sid, iid = s["id"], s["interactions"][-1]["id"]
    assert job_id_for(iid) in _queued_ids(config, model)

    r = client.post(f"/api/v1/sessions/{sid}/cancel", headers=user.headers)
    assert r.status_code == 200, r.get_json()
    turn = r.get_json()["interactions"][-1]
    assert (turn["state"], turn["status"], turn["finished"]) == ("error", "cancelled", True)
    assert turn["error"] == "cancelled by the user" and turn["metadata"]["cancelled"] == "true"
    assert job_id_for(iid) not in _queued_ids(config, model)
    again = client.post(f"/api/v1/sessions/{sid}/cancel", headers=user.headers)
    assert again.status_code == 200 and again.get_json()["interactions"][-1] == turn
    assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()["interactions"][-1] == turn

    r = client.put(f"/api/v1/sessions/{sid}/restart", headers=user.headers)
    assert r.status_code == 200, r.get_json()
    turn = r.get_json()["interactions"][-1]
    assert turn["id"] == iid and (turn["state"], turn["finished"], turn["error"]) == ("waiting", False, "")
    assert "cancelled" not in turn["metadata"] and turn["queue_position"] == 0
    assert _queued_ids(config, model).count(job_id_for(iid)) == 1
    # A restart of work still queued changes nothing: one job, the same interaction.
    again = client.put(f"/api/v1/sessions/{sid}/restart", headers=user.headers)
    assert again.status_code == 200 and again.get_json()["interactions"][-1]["status"] == turn["status"]
    assert _queued_ids(config, model).count(job_id_for(iid)) == 1
    assert len(again.get_json()["interactions"]) == 2

    # The restarted reply can be cancelled again, and a session that ended otherwise cannot.
    assert client.post(f"/api/v1/sessions/{sid}/cancel", headers=user.headers).status_code == 200
    assert job_id_for(iid) not in _queued_ids(config, model)


def test_cancel_and_restart_refuse_what_they_cannot_do(unserved, make_user, db):
    app, _ = unserved
    client, alice, bob = app.test_client(), make_user(), make_user()
    s = _chat(client, alice)
    sid = s["id"]
    for method, path in (("post", "cancel"), ("put", "restart")):
        # Another user's session, and one that does not exist, are not found; nothing changes.
        assert getattr(client, method)(f"/api/v1/sessions/{sid}/{path}", headers=bob.headers).status_code == 404
        r = getattr(client, method)(f"/api/v1/sessions/{uuid.uuid4()}/{path}", headers=alice.headers)
        assert r.status_code == 404 and "error" in r.get_json()
        assert getattr(client, method)(f"/api/v1/sessions/{sid}/{path}").status_code == 401
        assert getattr(client, method)(f"/api/v1/sessions/x%00y/{path}", headers=alice.headers).status_code < 500
    assert client.get(f"/api/v1/sessions/{sid}", headers=alice.headers).get_json()["interactions"][-1]["state"] == "waiting"
    # Work that ended by itself (here: completed) has nothing to cancel.
    db.execute("UPDATE interactions SET state = 'complete', finished = true, message = 'hi' WHERE id = %s",
               (s["interactions"][-1]["id"],))
    r = client.post(f"/api/v1/sessions/{sid}/cancel", headers=alice.headers)
    assert r.status_code == 409 and "nothing to cancel" in r.get_json()["error"]
    # ... but a completed reply can be generated again.
    r = client.put(f"/api/v1/sessions/{sid}/restart", headers=alice.headers)
    assert r.status_code == 200 and r.get_json()["interactions"][-1]["message"] == ""


def test_cancelling_a_running_chat_stops_it_on_the_runner_and_restart_answers(live_server, runner, live_user):
    server = vllm_server(runner)
    freeze(server)  # the reply cannot finish before the cancel
    try:
        r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                          data={"input": "talk for a long time", "mode": "inference", "type": "text"})
        sid, iid = r.json()["id"], r.json()["interactions"][-1]["id"]
        wait_for_session(live_server, live_user, sid, timeout=60,
                         until=lambda s: s["interactions"][-1]["status"] == "generating")
        cancelled_at = time.monotonic()
        r = requests.post(f"{live_server}/api/v1/sessions/{sid}/cancel", headers=live_user.headers, timeout=10)
        assert r.status_code == 200 and r.json()["interactions"][-1]["status"] == "cancelled"
        # The runner's job ends while vLLM is still frozen: it does not wait for a token.
        runner.wait_for_log(f"interaction {iid} was deleted or already finished; skipped", timeout=10)
        assert time.monotonic() - cancelled_at < 5
    finally:
        thaw(server)
    again = requests.post(f"{live_server}/api/v1/sessions/{sid}/cancel", headers=live_user.headers, timeout=10)
    assert again.status_code == 200 and again.json()["interactions"][-1]["status"] == "cancelled"
    r = requests.put(f"{live_server}/api/v1/sessions/{sid}/restart", headers=live_user.headers, timeout=10)
    assert r.status_code == 200 and r.json()["interactions"][-1]["state"] == "waiting"
    done = wait_for_session(live_server, live_user, sid, timeout=60)["interactions"][-1]
    assert done["id"] == iid and done["state"] == "complete" and done["message"], done
    assert "cancelled" not in done["metadata"]


def test_cancelling_data_preparation_stops_it_and_restart_prepares_again(live_server, runner, live_user):
    facts = ["Mira Tessel founded the Zorblat Library in 1847.", "The library stands on Kelvar Island.",
             "It holds twelve thousand maps of the northern seas.", "The reading room opens only on Thursdays."]
    server = vllm_server(runner)
    freeze(server)  # its questions cannot come back before the cancel
    try:
        r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                          data={"mode": "finetune", "type": "text", "manually_review_questions": "yes"},
                          files=[("files", ("zorblat.txt", " ".join(facts).encode()))], timeout=30)
        assert r.status_code == 201, r.text
        sid, iid = r.json()["id"], r.json()["interactions"][-1]["id"]
        wait_for_session(live_server, live_user, sid, timeout=60,
                         until=lambda s: s["interactions"][-1]["data_prep_stage"] == "generate_questions")
        time.sleep(0.5)  # its questions are now in flight
        r = requests.post(f"{live_server}/api/v1/sessions/{sid}/cancel", headers=live_user.headers, timeout=10)
        assert r.status_code == 200 and r.json()["interactions"][-1]["status"] == "cancelled", r.text
        runner.wait_for_log(f"data preparation of {iid} stopped", timeout=5)
    finally:
        thaw(server)
    r = requests.put(f"{live_server}/api/v1/sessions/{sid}/restart", headers=live_user.headers, timeout=10)
    turn = r.json()["interactions"][-1]
    assert r.status_code == 200 and turn["id"] == iid and turn["data_prep_stage"] == "generate_questions", r.text
    # Prepared again, it waits for the review of its pairs; a restart then is refused, saying why.
    wait_for_session(live_server, live_user, sid, timeout=120, until=lambda s: s["interactions"][-1]["state"] == "editing")
    r = requests.put(f"{live_server}/api/v1/sessions/{sid}/restart", headers=live_user.headers, timeout=10)
    assert r.status_code == 409 and "review" in r.json()["error"]


def test_a_cancel_and_a_runner_report_at_once_do_not_deadlock(unserved, config, make_user, db):
    """A runner's report holds the turn while it touches the session; a cancel holds the session
    while it takes the turn. Both take the session first, so the cancel waits and then answers,
    and the report commits (in the other order PostgreSQL kills one of them as a deadlock)."""
    app, _ = unserved
    client, user = app.test_client(), make_user()
    s = _chat(client, user)
    sid, iid = s["id"], s["interactions"][-1]["id"]
    with psycopg.connect(config.database_url, row_factory=dict_row) as report:
        assert sessions_store.get_interaction_for_runner(report, sid, iid).id == iid  # as authorize() locks it
        with ThreadPoolExecutor(1) as pool:
            cancel = pool.submit(client.post, f"/api/v1/sessions/{sid}/cancel", headers=user.headers)
            deadline = time.monotonic() + 10
            while not db.execute("SELECT 1 FROM pg_locks JOIN pg_stat_activity a USING (pid) WHERE NOT granted"
                                 " AND a.datname = current_database() AND a.query LIKE '%FOR UPDATE%'").fetchone():
                assert time.monotonic() < deadline and not cancel.done(), "the cancel never waited"
                time.sleep(0.05)
            sessions_store.touch_session(report, sid)  # as the report's update does
            report.commit()
            r = cancel.result(timeout=10)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["interactions"][-1]["status"] == "cancelled"
