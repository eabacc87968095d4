"""The sessions and API-key routes against real PostgreSQL and Valkey (no runner needed)."""
from __future__ import annotations

import io
import json
import zlib

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from controlplane.sessions.views import UNSET_TIME
from shared.jobs import job_id_for, queue_name


def create(client, user, **form):
    return client.post("/api/v1/sessions", data=form, headers=user.headers)


def test_create_text_session_stores_turns_and_queues_job(client, user, config):
    r = create(client, user, input="yo", mode="inference", type="text")
    assert r.status_code == 201, r.json
    s = r.json
    assert s["mode"] == "inference" and s["type"] == "text" and s["model_name"] == "helix/tiny-chat"
    assert s["owner"] == user.id and s["owner_type"] == "user"
    for field in ("id", "name", "created", "updated", "parent_session", "lora_dir", "config"):
        assert field in s
    user_turn, system_turn = s["interactions"]
    assert (user_turn["creator"], user_turn["message"], user_turn["state"]) == ("user", "yo", "complete")
    assert (system_turn["creator"], system_turn["state"], system_turn["finished"]) == ("system", "waiting", False)
    assert system_turn["status"] == "queued: waiting for a runner"
    assert system_turn["scheduled"] == UNSET_TIME  # set when a runner takes it (Go's zero time, as Helix sent)
    for field in ("progress", "files", "metadata", "status", "error", "data_prep_chunks", "data_prep_stage"):
        assert field in system_turn
    job = Job.fetch(job_id_for(system_turn["id"]), connection=Redis.from_url(config.redis_url),
                    serializer=JSONSerializer)
    assert job.origin == queue_name("text-inference", "helix/tiny-chat")
    assert job.func_name == "runner.jobs.text_inference"
    assert job.args[0]["messages"] == [{"role": "user", "content": "yo"}]
    # The job's payload is plain JSON (zlib-compressed by RQ), never pickle.
    raw = Redis.from_url(config.redis_url).hget(job.key, "data")
    assert json.loads(zlib.decompress(raw))[0] == "runner.jobs.text_inference"


def test_get_returns_same_session(client, user):
    s = create(client, user, input="hello", mode="inference", type="text").json
    r = client.get(f"/api/v1/sessions/{s['id']}", headers=user.headers)
    assert r.status_code == 200
    assert r.json["id"] == s["id"] and [i["id"] for i in r.json["interactions"]] == [i["id"] for i in s["interactions"]]


def test_multipart_form_is_accepted(client, user):
    r = client.post("/api/v1/sessions", headers=user.headers, content_type="multipart/form-data",
                    data={"input": "hi there", "mode": "inference", "type": "text"})
    assert r.status_code == 201, r.json
    assert r.json["interactions"][0]["message"] == "hi there"


def test_lone_surrogates_in_json_are_400(client, user):
    body = '{"input": "\\ud800", "mode": "inference", "type": "text"}'
    r = client.post("/api/v1/sessions", headers={**user.headers, "Content-Type": "application/json"}, data=body)
    assert r.status_code == 400 and "not valid Unicode" in r.json["error"]
    body = '{"input": "hi", "mode": "inference", "type": "text", "name": "\\udfff"}'
    r = client.post("/api/v1/sessions", headers={**user.headers, "Content-Type": "application/json"}, data=body)
    assert r.status_code == 400


def test_json_body_is_accepted(client, user):
    r = client.post("/api/v1/sessions", headers=user.headers,
                    json={"input": "hi", "mode": "inference", "type": "text"})
    assert r.status_code == 201, r.json


@pytest.mark.parametrize("form, fragment", [
    ({"input": "x", "type": "text"}, "missing 'mode'"),
    ({"input": "x", "mode": "train", "type": "text"}, "unknown mode"),
    ({"input": "x", "mode": "inference"}, "missing 'type'"),
    ({"input": "x", "mode": "inference", "type": "video"}, "unknown type"),
    ({"mode": "inference", "type": "text"}, "missing 'input'"),
    ({"input": "   ", "mode": "inference", "type": "text"}, "missing 'input'"),
    ({"input": "x", "mode": "inference", "type": "text", "model_name": "gpt-17"}, "unknown text model"),
    ({"input": "x", "mode": "inference", "type": "text", "max_tokens": "lots"}, "'max_tokens' must be a whole number"),
    ({"input": "x", "mode": "inference", "type": "text", "temperature": "nan"}, "'temperature' must be between"),
    ({"input": "x" * 10_001, "mode": "inference", "type": "text"}, "the limit is 10000"),
    ({"input": "a\x00b", "mode": "inference", "type": "text"}, "NUL"),
])
def test_bad_input_gives_400_with_what_to_fix(client, user, db, form, fragment):
    before = db.execute("SELECT count(*) AS n FROM sessions WHERE owner = %s", (user.id,)).fetchone()["n"]
    r = create(client, user, **form)
    assert r.status_code == 400
    assert fragment in r.json["error"]
    after = db.execute("SELECT count(*) AS n FROM sessions WHERE owner = %s", (user.id,)).fetchone()["n"]
    assert after == before  # nothing half-written


def test_malformed_bodies_are_4xx_json(client, user):
    r = client.post("/api/v1/sessions", headers={**user.headers, "Content-Type": "application/json"},
                    data="{not json")
    assert r.status_code == 400 and "error" in r.json
    r = client.post("/api/v1/sessions", headers={**user.headers, "Content-Type": "application/json"},
                    data="[1, 2]")
    assert r.status_code == 400 and "object" in r.json["error"]
    r = client.post("/api/v1/sessions", headers=user.headers, data={"input": "x" * (3 * 1024 * 1024),
                                                                     "mode": "inference", "type": "text"})
    assert r.status_code == 413 and "error" in r.json
    r = client.patch("/api/v1/sessions", headers=user.headers)
    assert r.status_code == 405 and "error" in r.json
    r = client.get("/api/v1/nothing-here", headers=user.headers)
    assert r.status_code == 404 and "error" in r.json


def test_auth_is_required_and_checked(client, user, api_runner_token):
    assert client.get("/api/v1/sessions").status_code == 401
    r = client.get("/api/v1/sessions", headers={"Authorization": "Bearer hl-not-a-real-key"})
    assert r.status_code == 401 and "not valid" in r.json["error"]
    # A runner token is not a user key, and a user key is not a runner token.
    r = client.get("/api/v1/sessions", headers={"Authorization": f"Bearer {api_runner_token}"})
    assert r.status_code == 401
    r = client.post("/api/v1/runner/register", headers=user.headers, json={"runner_id": "x"})
    assert r.status_code == 401


def test_a_key_in_the_url_is_taken_only_by_the_events_stream_and_the_viewer(client, user, api_runner_token):
    """Browsers' EventSource and <img> cannot set headers; everywhere else a key in the URL was
    accepted too."""
    s = create(client, user, input="hi", mode="inference", type="text").json
    stream = client.get(f"/api/v1/sessions/{s['id']}/events?access_token={user.key}")
    assert stream.status_code == 200 and next(stream.response).startswith(b"event: session")
    stream.close()
    client.post("/api/v1/filestore/upload", headers=user.headers, content_type="multipart/form-data",
                data={"files": [(io.BytesIO(b"seen"), "seen.txt")]})
    assert client.get(f"/api/v1/filestore/viewer/seen.txt?access_token={user.key}").data == b"seen"
    assert client.get("/api/v1/filestore/viewer/seen.txt?access_token=hl-wrong").status_code == 401
    for method, url in [("get", "/api/v1/sessions"), ("get", f"/api/v1/sessions/{s['id']}"),
                        ("delete", f"/api/v1/sessions/{s['id']}"), ("get", "/api/v1/api_keys"),
                        ("get", "/api/v1/filestore/list")]:
        r = getattr(client, method)(f"{url}?access_token={user.key}")
        assert r.status_code == 401 and "Authorization: Bearer" in r.json["error"], url  # was 200
        r = getattr(client, method)(f"{url}?access_token={user.key}", headers=user.headers)
        assert r.status_code == 401, url  # refused even beside the header: the key is in a URL
    r = client.post(f"/api/v1/runner/register?access_token={api_runner_token}", json={"runner_id": "x"})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json["error"]
    assert client.get(f"/api/v1/sessions/{s['id']}", headers=user.headers).status_code == 200  # not deleted


def test_users_never_see_each_others_sessions(client, make_user):
    alice, bob = make_user(), make_user()
    s = create(client, alice, input="secret", mode="inference", type="text").json
    assert client.get(f"/api/v1/sessions/{s['id']}", headers=bob.headers).status_code == 404
    assert client.put(f"/api/v1/sessions/{s['id']}", headers=bob.headers, data={"input": "x"}).status_code == 404
    assert client.delete(f"/api/v1/sessions/{s['id']}", headers=bob.headers).status_code == 404
    assert client.get(f"/api/v1/sessions/{s['id']}/events", headers=bob.headers).status_code == 404
    assert s["id"] not in [x["id"] for x in client.get("/api/v1/sessions", headers=bob.headers).json["sessions"]]
    assert client.get(f"/api/v1/sessions/{s['id']}", headers=alice.headers).status_code == 200


def test_list_sessions_pages_newest_first(client, make_user):
    u = make_user()
    ids = [create(client, u, input=f"n{i}", mode="inference", type="text").json["id"] for i in range(5)]
    page = client.get("/api/v1/sessions?offset=1&limit=2", headers=u.headers).json
    assert page["total_count"] == 5 and page["counter"] == {"count": 5}
    assert [s["id"] for s in page["sessions"]] == ids[::-1][1:3]
    assert client.get("/api/v1/sessions?limit=0", headers=u.headers).status_code == 400
    assert client.get("/api/v1/sessions?offset=-1", headers=u.headers).status_code == 400


def test_continue_chat_waits_for_previous_reply(client, user):
    s = create(client, user, input="first", mode="inference", type="text").json
    r = client.put(f"/api/v1/sessions/{s['id']}", headers=user.headers, data={"input": "second"})
    assert r.status_code == 409 and "still being generated" in r.json["error"]
    r = client.put(f"/api/v1/sessions/{s['id']}", headers=user.headers, data={})
    assert r.status_code == 400


def test_delete_removes_session_and_its_job(client, user, config):
    s = create(client, user, input="bye", mode="inference", type="text").json
    r = client.delete(f"/api/v1/sessions/{s['id']}", headers=user.headers)
    assert r.status_code == 200
    assert client.get(f"/api/v1/sessions/{s['id']}", headers=user.headers).status_code == 404
    assert not Redis.from_url(config.redis_url).exists(f"rq:job:{job_id_for(s['interactions'][-1]['id'])}")


def test_api_keys_create_list_delete(client, user):
    r = client.post("/api/v1/api_keys", headers=user.headers, json={"name": "laptop"})
    assert r.status_code == 201
    new_key = r.json["key"]
    assert new_key.startswith("hl-") and r.json["name"] == "laptop"
    listed = client.get("/api/v1/api_keys", headers=user.headers).json
    assert {k["name"] for k in listed} == {"test", "laptop"}
    # Keys are shown once, stored only as digests: a listed item's `key` (Helix's field) is its hint.
    assert all(k["key"] == k["hint"] and "…" in k["key"] and k["owner_type"] == "user" for k in listed)
    other = {"Authorization": f"Bearer {new_key}"}
    assert client.get("/api/v1/sessions", headers=other).status_code == 200
    assert client.delete(f"/api/v1/api_keys?key={new_key}", headers=user.headers).status_code == 200
    assert client.get("/api/v1/sessions", headers=other).status_code == 401
    assert client.delete("/api/v1/api_keys?key=hl-unknown", headers=user.headers).status_code == 404
    assert client.delete("/api/v1/api_keys", headers=user.headers).status_code == 400


def test_api_keys_are_stored_as_digests(client, user, db):
    key = client.post("/api/v1/api_keys", headers=user.headers, data={"name": "x"}).json["key"]
    rows = db.execute("SELECT digest, hint FROM api_keys WHERE owner = %s", (user.id,)).fetchall()
    assert all(key not in (r["digest"] + r["hint"]) for r in rows)


@pytest.mark.parametrize("field, value, fragment", [
    ("width", "100", "multiple of 8"),
    ("height", "4096", "between 64 and 2048"),
    ("num_images", "5", "between 1 and 4"),
    ("steps", "0", "between 1 and 150"),
    ("guidance", "-1", "between 0.0 and 30.0"),
    ("guidance", "inf", "between 0.0 and 30.0"),
    ("seed", "-1", "between 0 and"),
    ("seed", "1.5", "whole number"),
])
def test_bad_image_parameters_are_400(client, user, field, value, fragment):
    r = create(client, user, input="a cat", mode="inference", type="image", **{field: value})
    assert r.status_code == 400
    assert field in r.json["error"] and fragment in r.json["error"]


def test_image_session_queues_validated_parameters(client, user, config):
    r = create(client, user, input="a cat", mode="inference", type="image", width="128", height="64",
               num_images="2", steps="5", guidance="3.5", seed="42")
    assert r.status_code == 201, r.json
    assert r.json["model_name"] == "helix/tiny-sd"
    job = Job.fetch(job_id_for(r.json["interactions"][-1]["id"]), connection=Redis.from_url(config.redis_url),
                    serializer=JSONSerializer)
    assert job.origin == queue_name("image-inference", "helix/tiny-sd")
    payload = job.args[0]
    assert (payload["prompt"], payload["width"], payload["height"], payload["num_images"], payload["steps"],
            payload["guidance"], payload["seed"]) == ("a cat", 128, 64, 2, 5, 3.5, 42)


def test_chat_history_leaves_out_failed_turns():
    from datetime import datetime, timezone

    from controlplane.fleet.dispatch import chat_history
    from controlplane.storage.rows import InteractionRow

    def turn(n, creator, state="complete", message=""):
        now = datetime.now(timezone.utc)
        return InteractionRow(
            id=str(n), session_id="s", seq=n, created=now, updated=now, scheduled=None, completed=None,
            creator=creator, mode="inference", runner="", message=message, progress=0, files=[],
            finished=state != "waiting", metadata={}, state=state, status="", error="", lora_dir="",
            data_prep_chunks={}, data_prep_stage="")

    interactions = [
        turn(1, "user", message="q1"), turn(2, "system", message="a1"),
        turn(3, "user", message="q2"), turn(4, "system", state="error"),
        turn(5, "user", message="q3"), turn(6, "system", state="waiting"),
    ]
    assert chat_history(interactions, "6") == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q3"},
    ]
    assert chat_history(interactions, "2") == [{"role": "user", "content": "q1"}]


def test_event_streams_are_capped_so_other_requests_always_get_a_thread(config, user):
    from dataclasses import replace

    from controlplane.app import create_app

    app = create_app(replace(config, max_event_streams=1), start_reconciler=False)
    client = app.test_client()
    sid = create(client, user, input="wait", mode="inference", type="text").json["id"]
    first = client.get(f"/api/v1/sessions/{sid}/events", headers=user.headers, buffered=False)
    assert first.status_code == 200
    second = client.get(f"/api/v1/sessions/{sid}/events", headers=user.headers, buffered=False)
    assert second.status_code == 503 and f"GET /api/v1/sessions/{sid}" in second.json["error"]
    assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).status_code == 200
    first.close()  # the client went away: its slot is free again
    third = client.get(f"/api/v1/sessions/{sid}/events", headers=user.headers, buffered=False)
    assert third.status_code == 200
    third.close()
