"""The runner routes: token checks, update validation, no update after the final one, limits on
what a runner announces, and a runner writing only the interactions whose job it runs."""
from __future__ import annotations

import io
import uuid

import pytest

from controlplane.sessions.views import UNSET_TIME
from shared.runners import RUNNER_HEADER
from shared.wire import WIRE_VERSION
from tests.conftest import hold_job, runner_auth

RUNNER = "r1"


def register(client, headers, runner_id, models, info=None):
    return client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": runner_id, "models": models, "info": info or {}})


@pytest.fixture()
def runner_headers(client, api_runner_token):
    """Runner r1's headers: its token, and its id registered with that token."""
    headers = runner_auth(api_runner_token)
    assert register(client, headers, RUNNER, {"text": []}).status_code == 200
    return {**headers, RUNNER_HEADER: RUNNER}


def new_turn(client, user, held_by: str | None = RUNNER, **fields):
    """A new chat turn, its job started by a worker of runner `held_by` (None: still queued)."""
    s = client.post("/api/v1/sessions", headers=user.headers,
                    data={"input": "hi", "mode": "inference", "type": "text", **fields}).json
    if held_by:
        hold_job(client.application.config["HELIX"].redis_url, s["interactions"][-1]["id"], held_by)
    return s["id"], s["interactions"][-1]["id"]


def test_updates_stream_then_final_closes(client, user, runner_headers):
    sid, iid = new_turn(client, user)
    url = f"/api/v1/runner/sessions/{sid}/interactions/{iid}"
    first = client.post(url, headers=runner_headers, json={"runner": "r1", "message": "", "progress": 0})
    assert first.status_code == 200 and first.json["scheduled"] != UNSET_TIME  # when a runner took it
    client.post(url, headers=runner_headers, json={"runner": "r1", "delta": "Hel"})
    r = client.post(url, headers=runner_headers, json={"runner": "r1", "delta": "lo\x00"})
    assert r.json["message"] == "Hello\ufffd"  # NUL from a model is stored as U+FFFD
    r = client.post(url, headers=runner_headers, json={"runner": "r1", "state": "complete", "message": "Hello",
                                                       "final": True})
    assert r.json["finished"] and r.json["progress"] == 100 and r.json["state"] == "complete"
    late = client.post(url, headers=runner_headers, json={"runner": "r2", "delta": "late"})
    assert late.status_code == 409
    s = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).json
    assert s["interactions"][-1]["message"] == "Hello" and s["interactions"][-1]["runner"] == "r1"


@pytest.mark.parametrize("body, fragment", [
    ([1, 2], "JSON object"),
    ({"state": "dancing"}, "state: Input should be"),
    ({"progress": 5.0}, "progress"),
    ({"stat": "typo"}, "stat: unknown field"),
    ({"progress": 101}, "progress"),
    ({"progress": "half"}, "progress"),
    ({"files": "a.png"}, "files"),
    ({"delta": 5}, "delta"),
    ({"metadata": []}, "metadata"),
])
def test_bad_updates_are_400(client, user, runner_headers, body, fragment):
    sid, iid = new_turn(client, user)
    r = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}", headers=runner_headers, json=body)
    assert r.status_code == 400 and fragment in r.json["error"]


def test_unknown_interaction_is_404_and_user_keys_are_refused(client, user, runner_headers):
    sid, iid = new_turn(client, user)
    assert client.post(f"/api/v1/runner/sessions/{sid}/interactions/nope", headers=runner_headers,
                       json={}).status_code == 404
    assert client.post(f"/api/v1/runner/sessions/other/interactions/{iid}", headers=runner_headers,
                       json={}).status_code == 404
    assert client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}", headers=user.headers,
                       json={}).status_code == 401
    assert client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}",
                       headers={"Authorization": "Bearer hr-forged"}, json={}).status_code == 401


def test_registered_runner_models_become_valid_choices(client, user, runner_headers):
    r = client.post("/api/v1/runner/register", headers=runner_headers,
                    json={"runner_id": "gpu-1", "models": {"text": ["acme/custom-7b"], "image": []}})
    assert r.status_code == 200
    r = client.post("/api/v1/sessions", headers=user.headers,
                    data={"input": "hi", "mode": "inference", "type": "text", "model_name": "acme/custom-7b"})
    assert r.status_code == 201 and r.json["model_name"] == "acme/custom-7b"
    bad = client.post("/api/v1/runner/register", headers=runner_headers, json={"runner_id": "", "models": {}})
    assert bad.status_code == 400
    bad = client.post("/api/v1/runner/register", headers=runner_headers, json={"runner_id": "x", "models": {"text": "m"}})
    assert bad.status_code == 400


def test_runner_upload_goes_to_the_owners_files(client, user, runner_headers):
    sid, iid = new_turn(client, user)
    r = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}/files", headers=runner_headers,
                    data={"file": (io.BytesIO(b"PNGDATA"), "image-0.png")}, content_type="multipart/form-data")
    assert r.status_code == 201
    path = r.json["path"]
    assert path == f"sessions/{sid}/outputs/{iid}/image-0.png"
    assert client.get(f"/api/v1/filestore/viewer/{path}", headers=user.headers).data == b"PNGDATA"
    r = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}/files", headers=runner_headers,
                    data={"file": (io.BytesIO(b"x"), "../../escape.png")}, content_type="multipart/form-data")
    assert r.status_code == 400
    # Runners read a session's own files through the control plane, and nothing else.
    got = client.get(f"/api/v1/runner/sessions/{sid}/files?path={path}", headers=runner_headers)
    assert got.status_code == 200 and got.data == b"PNGDATA"
    elsewhere = client.get(f"/api/v1/runner/sessions/{sid}/files?path=private/notes.txt", headers=runner_headers)
    assert elsewhere.status_code == 400
    sneaky = f"sessions/{sid}/../../private/notes.txt"
    assert client.get(f"/api/v1/runner/sessions/{sid}/files?path={sneaky}", headers=runner_headers).status_code == 400
    assert client.get(f"/api/v1/runner/sessions/{sid}/files?path={path}", headers=user.headers).status_code == 401
    # Deleting the session deletes its files.
    client.delete(f"/api/v1/sessions/{sid}", headers=user.headers)
    assert client.get(f"/api/v1/filestore/viewer/{path}", headers=user.headers).status_code == 404


@pytest.mark.parametrize("registration, fragment", [
    ({"models": {"text": [f"flood/m{i}" for i in range(5000)]}}, "at most 16 models"),
    ({"models": {"text": [f"flood/m{i}" for i in range(17)]}}, "at most 16 models"),
    ({"models": {"text": ["a" * 201]}}, "not allowed"),
    ({"models": {"text": ["bad name"]}}, "not allowed"),
    ({"models": {"text": ["<script>"]}}, "not allowed"),
    ({"models": {"audio": ["m"]}}, "models.audio"),
    ({"runner_id": "r" * 201}, "runner_id"),
    ({"runner_id": "a b"}, "runner_id"),
    ({"info": {f"k{i}": i for i in range(33)}}, "info"),
    ({"info": {"blob": "x" * 201}}, "info"),
    ({"info": {"nested": {"a": 1}}}, "info"),
])
def test_what_a_runner_announces_is_capped_and_checked(client, runner_headers, registration, fragment):
    body = {"runner_id": "flooder", "models": {"text": ["acme/ok"]}, "info": {}, **registration}
    r = client.post("/api/v1/runner/register", headers=runner_headers, json=body)
    assert r.status_code == 400 and fragment in r.json["error"], r.json  # 5,000 names were accepted


def test_error_bodies_list_a_few_models(client, user, runner_headers):
    models = [f"acme/model-{uuid.uuid4().hex[:6]}-{i}" for i in range(16)]
    assert register(client, runner_headers, "many-models", {"text": models}).status_code == 200
    r = client.post("/api/v1/sessions", headers=user.headers,
                    data={"input": "hi", "mode": "inference", "type": "text", "model_name": "nope"})
    assert r.status_code == 400 and "more)" in r.json["error"] and len(r.data) < 500, r.json


def test_runners_not_seen_for_a_while_are_forgotten(client, user, runner_headers, db, config):
    model = f"acme/gone-{uuid.uuid4().hex[:8]}"
    assert register(client, runner_headers, "soon-gone", {"text": [model]}).status_code == 200
    ask = {"input": "hi", "mode": "inference", "type": "text", "model_name": model}
    assert client.post("/api/v1/sessions", headers=user.headers, data=ask).status_code == 201
    db.execute("UPDATE runners SET last_seen = now() - make_interval(secs => %s) WHERE id = 'soon-gone'",
               (config.runner_ttl + 1,))
    r = client.post("/api/v1/sessions", headers=user.headers, data=ask)
    assert r.status_code == 400 and "unknown text model" in r.json["error"]  # was 201: never forgotten
    assert register(client, runner_headers, "soon-gone", {"text": [model]}).status_code == 200  # back
    assert client.post("/api/v1/sessions", headers=user.headers, data=ask).status_code == 201


def test_one_token_cannot_register_runners_without_end(client, db, config):
    from controlplane.accounts import store as accounts

    headers = runner_auth(accounts.create_runner_token(db, 'flood')[1])
    prefix = uuid.uuid4().hex[:8]
    for i in range(config.max_runners_per_token):
        assert register(client, headers, f"{prefix}-{i}", {"text": ["acme/ok"]}).status_code == 200
    r = register(client, headers, f"{prefix}-more", {"text": ["acme/ok"]})
    assert r.status_code == 409 and "live runners" in r.json["error"]
    assert register(client, headers, f"{prefix}-0", {"text": ["acme/ok"]}).status_code == 200  # a known id


def test_requests_the_model_cannot_take_are_refused_at_once(client, user, runner_headers):
    """Runners announce their text model's limits; past them a request failed only on the runner."""
    model = f"acme/small-{uuid.uuid4().hex[:8]}"
    assert register(client, runner_headers, "small-context", {"text": [model]},
                    {"max_model_len": 1024, "max_tokens": 256}).status_code == 200

    def create(prompt="hi", **fields):
        return client.post("/api/v1/sessions", headers=user.headers,
                           data={"input": prompt, "mode": "inference", "type": "text", "model_name": model, **fields})

    r = create(max_tokens="1024")
    assert r.status_code == 400 and "context of 1024 tokens" in r.json["error"], r.json  # was 201
    r = create("x" * (8 * 1024 + 1))
    assert r.status_code == 400 and "8192 characters" in r.json["error"], r.json  # was 201
    assert create(max_tokens="1023").status_code == 201
    s = create("x" * 8 * 1024).json
    r = client.put(f"/api/v1/sessions/{s['id']}", headers=user.headers, data={"input": "y" * (8 * 1024 + 1)})
    assert r.status_code == 400 and "context is 1024 tokens" in r.json["error"], r.json
    for bad in ({"max_model_len": "big"}, {"max_model_len": 0}, {"max_tokens": 1.5}):
        r = register(client, runner_headers, "small-context", {"text": [model]}, bad)
        assert r.status_code == 400 and "whole number of tokens" in r.json["error"]


@pytest.fixture()
def other_runner(client, db):
    """Another runner, registered with another runner token."""
    from controlplane.accounts import store as accounts

    headers = runner_auth(accounts.create_runner_token(db, 'other')[1])
    runner_id = f"other-{uuid.uuid4().hex[:8]}"
    assert register(client, headers, runner_id, {"text": []}).status_code == 200
    return {**headers, RUNNER_HEADER: runner_id}


def test_a_runner_writes_only_the_interactions_whose_job_it_runs(client, user, runner_headers, api_runner_token):
    """Any runner token could update any interaction and spoof the runner that wrote it."""
    url = "/api/v1/runner/sessions/{}/interactions/{}"
    sid, iid = new_turn(client, user, held_by=None)  # queued: no runner took it yet
    r = client.post(url.format(sid, iid), headers=runner_headers, json={"delta": "x"})
    assert r.status_code == 409 and "no runner is" in r.json["error"]  # was 200
    sid, iid = new_turn(client, user, held_by="r2")  # another runner's
    r = client.post(url.format(sid, iid), headers=runner_headers, json={"delta": "x"})
    assert r.status_code == 409 and "another runner is" in r.json["error"]  # was 200
    r = client.post(url.format(sid, iid), headers={**runner_headers, RUNNER_HEADER: "r2"}, json={"delta": "x"})
    assert r.status_code == 403 and "not registered with this runner token" in r.json["error"]
    upload = client.post(url.format(sid, iid) + "/files", headers=runner_headers,
                         data={"file": (io.BytesIO(b"x"), "a.png")}, content_type="multipart/form-data")
    assert upload.status_code == 409  # was 201
    assert client.get(f"/api/v1/runner/sessions/{sid}/files?path=sessions/{sid}/x",
                      headers=runner_headers).status_code == 409
    # Its own interaction: it must name itself, and cannot write as another runner.
    sid, iid = new_turn(client, user)
    token_only = runner_auth(api_runner_token)
    r = client.post(url.format(sid, iid), headers=token_only, json={"delta": "x"})
    assert r.status_code == 400 and RUNNER_HEADER in r.json["error"]
    r = client.post(url.format(sid, iid), headers=token_only, json={"runner": RUNNER, "delta": "x"})
    assert r.status_code == 200 and r.json["runner"] == RUNNER  # the runner field names it, as runners send
    r = client.post(url.format(sid, iid), headers=runner_headers, json={"runner": "r2", "delta": "x"})
    assert r.status_code == 400 and "registered id" in r.json["error"]  # was stored as written by r2
    r = client.post(url.format(sid, iid), headers=runner_headers, json={"runner": RUNNER, "delta": "y"})
    assert r.status_code == 200 and r.json["runner"] == RUNNER and r.json["message"] == "xy"


def test_fine_tune_reports_come_only_from_the_runner_running_the_job(client, user, runner_headers, other_runner):
    s = client.post("/api/v1/sessions", headers=user.headers, content_type="multipart/form-data",
                    data={"mode": "finetune", "type": "text", "files": (io.BytesIO(b"Boats float."), "a.txt")}).json
    sid, iid = s["id"], s["interactions"][-1]["id"]
    redis_url = client.application.config["HELIX"].redis_url
    hold_job(redis_url, iid, RUNNER, stage="dataprep", kind="text-dataprep")
    base = f"/api/v1/runner/sessions/{sid}/interactions/{iid}/finetune"
    report = {"document": "a.txt", "chars": 12, "chunks": 1}
    assert client.post(f"{base}/document", headers=other_runner, json=report).status_code == 409  # was 200
    assert client.get(f"{base}/pairs", headers=other_runner).status_code == 409  # was 200: every user's pairs
    assert client.post(f"{base}/document", headers=runner_headers, json=report).status_code == 200
    assert client.get(f"{base}/pairs", headers=runner_headers).status_code == 200
    document = s["interactions"][0]["files"][0]
    assert client.get(f"/api/v1/runner/sessions/{sid}/files?path={document}", headers=other_runner).status_code == 409
    got = client.get(f"/api/v1/runner/sessions/{sid}/files?path={document}", headers=runner_headers)
    assert got.status_code == 200 and got.data == b"Boats float."


def test_final_is_true_or_false(client, user, runner_headers):
    sid, iid = new_turn(client, user)
    url = f"/api/v1/runner/sessions/{sid}/interactions/{iid}"
    for final in ("false", 0, 1, [], "true"):
        r = client.post(url, headers=runner_headers, json={"message": "partial", "final": final})
        assert r.status_code == 400 and "final: Input should be a valid boolean" in r.json["error"]  # "false" finished it
    r = client.post(url, headers=runner_headers, json={"message": "partial", "final": False})
    assert r.status_code == 200 and not r.json["finished"]


def test_attached_files_are_the_interactions_own_outputs(client, user, runner_headers):
    sid, iid = new_turn(client, user)
    other_sid, other_iid = new_turn(client, user)
    url = f"/api/v1/runner/sessions/{sid}/interactions/{iid}"
    own = f"sessions/{sid}/outputs/{iid}"
    for path in (f"sessions/{sid}/outputs/{other_iid}/x.png", f"sessions/{other_sid}/outputs/{other_iid}/x.png",
                 "private/notes.txt", f"{own}/../../../../private/notes.txt", f"{own}//x.png", own, f"{own}x/y"):
        r = client.post(url, headers=runner_headers, json={"files": [path]})
        assert r.status_code == 400 and "outputs folder" in r.json["error"], path  # was 200
    r = client.post(url, headers=runner_headers, json={"lora_dir": f"sessions/{sid}/outputs/{other_iid}"})
    assert r.status_code == 400 and "lora_dir" in r.json["error"]
    r = client.post(url, headers=runner_headers, json={"files": [f"{own}/image-0.png"], "lora_dir": own})
    assert r.status_code == 200 and r.json["files"] == [f"{own}/image-0.png"]


def test_a_runner_id_belongs_to_the_token_that_registered_it_first(client, db, runner_headers, other_runner):
    r = client.post("/api/v1/runner/register", headers=other_runner, json={"runner_id": RUNNER, "models": {}})
    assert r.status_code == 409 and "another runner token" in r.json["error"]  # was 200: a takeover
    token = db.execute("SELECT t.name FROM runners r JOIN runner_tokens t ON t.id = r.token_id"
                       " WHERE r.id = %s", (RUNNER,)).fetchone()["name"]
    assert token == "test runner"
    assert client.post("/api/v1/runner/register", headers=runner_headers,
                       json={"runner_id": RUNNER, "models": {}}).status_code == 200


@pytest.mark.parametrize("spoken, upgrade", [(None, "runner"), (str(WIRE_VERSION - 1), "runner"),
                                             (str(WIRE_VERSION + 1), "control plane"), ("x", "runner")])
def test_a_runner_of_another_wire_version_is_told_what_to_upgrade(client, user, api_runner_token, spoken, upgrade):
    """Its messages would be misread (or misread ours): every runner route refuses it, saying
    which side to upgrade, once its token is known good."""
    from shared.wire import WIRE_VERSION_HEADER

    headers = {k: v for k, v in runner_auth(api_runner_token, RUNNER).items() if k != WIRE_VERSION_HEADER}
    if spoken is not None:
        headers[WIRE_VERSION_HEADER] = spoken
    sid, iid = new_turn(client, user)
    for r in (register_as(client, headers),
              client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}", headers=headers, json={"delta": "x"}),
              client.get(f"/api/v1/runner/sessions/{sid}/files?path=sessions/{sid}/x", headers=headers),
              client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}/finetune/metrics", headers=headers,
                          json={"points": []})):
        assert r.status_code == 426, r.json  # Upgrade Required
        assert f"upgrade the {upgrade}" in r.json["error"] and WIRE_VERSION_HEADER in r.json["error"], r.json
    forged = {**headers, "Authorization": "Bearer hr-forged"}
    assert register_as(client, forged).status_code == 401  # the token first: nothing is said to a stranger


def register_as(client, headers):
    return client.post("/api/v1/runner/register", headers=headers, json={"runner_id": RUNNER, "models": {}})


def test_a_runner_is_told_the_adapters_of_deleted_sessions_until_it_says_it_deleted_them(client, user, db,
                                                                                         api_runner_token):
    """Runners keep adapters on disk: each registration says how far it deleted the forgotten ones,
    and the answer names the rest, oldest first. A registration that says nothing of it (the
    previous release's runner) is answered from the start."""
    from controlplane.fleet import forgotten_adapters
    from shared.finetune import adapter_name

    headers = runner_auth(api_runner_token, RUNNER)
    first = register_as(client, headers).json
    assert first["id"] == RUNNER
    seen = first["forgotten_through"]  # what earlier tests' deletions left
    sid, _ = new_turn(client, user, held_by=None)
    lora_dir = f"sessions/{sid}/outputs/x"
    db.execute("UPDATE sessions SET lora_dir = %s WHERE id = %s", (lora_dir, sid))
    assert client.delete(f"/api/v1/sessions/{sid}", headers=user.headers).status_code == 200
    told = client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": RUNNER, "models": {}, "forgotten_seen": seen}).json
    assert told["forget"] == [adapter_name(lora_dir)] and told["forgotten_through"] > seen
    done = client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": RUNNER, "models": {}, "forgotten_seen": told["forgotten_through"]}).json
    assert done["forget"] == [] and done["forgotten_through"] == told["forgotten_through"]
    assert RUNNER not in forgotten_adapters.runners_behind(db, told["forgotten_through"], 60)
    assert adapter_name(lora_dir) in register_as(client, headers).json["forget"]
    bad = client.post("/api/v1/runner/register", headers=headers,
                      json={"runner_id": RUNNER, "models": {}, "forgotten_seen": -1})
    assert bad.status_code == 400 and "forgotten_seen" in bad.json["error"]
