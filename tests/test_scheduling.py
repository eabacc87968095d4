"""Scheduling: a waiting session shows its place in the queue and why it waits; work no runner of
the fleet could ever hold fails at once with what it needs; a runner whose memory cannot hold a
job leaves it queued for another; a fine-tune on a runner does not hold up its chats."""
from __future__ import annotations

import io
import json
import time
import uuid

import openai
import psutil
import psycopg
import pytest
import requests
from PIL import Image
from psycopg.rows import dict_row

from controlplane.runners.reconciler import Reconciler
from shared.memory import GIB, MIB, needs_from_env, parse_size
from shared.settings import SettingError
from tests.conftest import TEXT_MODEL, app_with, runner_auth, start_control_plane, start_runner, wait_for_session
from tests.test_openai_finetuning import examples, sdk, upload


def _register(client, token: str, runner_id: str, models: dict, info: dict | None = None):
    return client.post("/api/v1/runner/register", headers=runner_auth(token),
                       json={"runner_id": runner_id, "models": models, "info": info or {}})


def _chat(client, user, **fields) -> dict:
    r = client.post("/api/v1/sessions", headers=user.headers,
                    data={"input": "hello", "mode": "inference", "type": "text", **fields})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def _waiting(client, user, sid: str) -> dict:
    return client.get(f"/api/v1/sessions/{sid}", headers=user.headers).get_json()["interactions"][-1]


def test_waiting_sessions_show_their_place_and_why(config, tmp_path_factory, make_user, api_runner_token, db):
    model = f"helix/queued-{uuid.uuid4().hex[:8]}"
    app = app_with(config, tmp_path_factory, text_models=[model])
    client, user = app.test_client(), make_user()
    sids = [_chat(client, user)["id"] for _ in range(3)]
    for n, sid in enumerate(sids):
        turn = _waiting(client, user, sid)
        assert turn["queue_position"] == n and turn["waiting_reason"] == f"no runner serves model {model}"

    assert _register(client, api_runner_token, f"serves-{model[-8:]}", {"text": [model]}).status_code == 200
    reasons = [_waiting(client, user, sid)["waiting_reason"] for sid in sids]
    assert reasons == [f"next in line: waiting for a free worker on a runner serving {model}",
                       "1 job ahead", "2 jobs ahead"]
    # One ahead is cancelled: the last moves up.
    assert client.post(f"/api/v1/sessions/{sids[1]}/cancel", headers=user.headers).status_code == 200
    assert _waiting(client, user, sids[2])["queue_position"] == 1
    cancelled = _waiting(client, user, sids[1])
    assert "queue_position" not in cancelled and "waiting_reason" not in cancelled
    # The list of sessions (a status poll of many) does no queue work.
    listed = client.get("/api/v1/sessions", headers=user.headers).get_json()["sessions"]
    assert all(s["interactions"] == [] for s in listed)


def test_work_no_runner_could_hold_fails_at_once(config, tmp_path_factory, make_user, api_runner_token, db):
    model = f"helix/big-{uuid.uuid4().hex[:8]}"
    needs = {**config.memory_needs, model: {"text-inference": 4 * GIB, "text-dataprep": 4 * GIB,
                                            "text-finetune": 64 * GIB}}
    app = app_with(config, tmp_path_factory, text_models=[model], memory_needs=needs)
    client, user = app.test_client(), make_user()
    small, large = f"small-{model[-8:]}", f"large-{model[-8:]}"
    assert _register(client, api_runner_token, small, {"text": [model]}, {"host_memory_bytes": 2 * GIB}).status_code == 200

    r = client.post("/api/v1/sessions", headers=user.headers, data={"input": "hi", "mode": "inference", "type": "text"})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"] == (f"text-inference on model {model!r} needs 4 GiB of memory (its declared need:"
                                     " HELIX_MEMORY_NEEDS), more than any runner serving it has: the largest has 2 GiB")
    assert db.execute("SELECT count(*) AS n FROM sessions WHERE owner = %s", (user.id,)).fetchone()["n"] == 0

    # A runner with a larger GPU joins: chats fit, a fine-tune of 64 GiB still does not.
    assert _register(client, api_runner_token, large, {"text": [model]},
                     {"host_memory_bytes": GIB, "gpu_memory_bytes": 8 * GIB}).status_code == 200
    s = _chat(client, user)
    r = client.post("/api/v1/sessions", headers=user.headers, data={"mode": "finetune", "type": "text"},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and "needs 64 GiB" in r.get_json()["error"], r.get_json()

    # The large runner leaves before the chat's job is taken: the reconciler ends it with the reason.
    db.execute("UPDATE runners SET last_seen = now() - interval '1 day' WHERE id = %s", (large,))
    db.execute("UPDATE interactions SET updated = now() - interval '1 minute' WHERE session_id = %s", (s["id"],))
    with psycopg.connect(config.database_url, row_factory=dict_row) as conn:
        assert Reconciler(app).check(conn, s["interactions"][-1]["id"], s["id"], user.id) == "failed-no-runner-fits"
    turn = client.get(f"/api/v1/sessions/{s['id']}", headers=user.headers).get_json()["interactions"][-1]
    assert turn["state"] == "error" and "needs 4 GiB" in turn["error"] and "largest has 2 GiB" in turn["error"]


@pytest.mark.parametrize("info", [{"host_memory_bytes": -1}, {"gpu_memory_bytes": "lots"},
                                  {"host_memory_bytes": 2**61}, {"gpu_memory_bytes": True}])
def test_runners_announce_memory_as_whole_bytes(client, api_runner_token, info):
    r = _register(client, api_runner_token, "bad-memory", {"text": []}, info)
    assert r.status_code == 400 and "whole number of bytes" in r.get_json()["error"]


def test_memory_needs_setting_is_checked():
    assert parse_size("512MiB") == 512 * MIB and parse_size("1.5G") == 3 * GIB // 2 and parse_size(7) == 7
    table = needs_from_env({"HELIX_MEMORY_NEEDS": json.dumps({"m": {"text-finetune": "20GiB"}})})
    assert table["m"] == {"text-finetune": 20 * GIB} and table[TEXT_MODEL]["text-finetune"] > 0
    for bad in ("[1]", "{\"m\": 3}", "{\"m\": {\"chat\": 1}}", "{\"m\": {\"text-finetune\": \"lots\"}}", "{"):
        with pytest.raises(SettingError, match="HELIX_MEMORY_NEEDS"):
            needs_from_env({"HELIX_MEMORY_NEEDS": bad})


def _striped(size=(256, 320)) -> bytes:
    image = Image.new("RGB", size, (30, 30, 220))
    image.paste(Image.new("RGB", (size[0], size[1] // 2), (220, 30, 30)), (0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.timeout(400)
def test_a_runner_without_the_memory_leaves_the_job_for_another(services, runner_token, models_dir, make_live_user,
                                                                 tmp_path):
    """Image-only runners (no vLLM, so quick to start): the small one takes the fine-tune, finds its
    memory too small, leaves it queued and says why; the large one, started later, trains it."""
    model = f"helix/tiny-sd-mem-{uuid.uuid4().hex[:6]}"
    url, control_plane = start_control_plane(
        services, tmp_path, HELIX_IMAGE_MODELS=model,
        HELIX_MEMORY_NEEDS=json.dumps({model: {"image-finetune": "256MiB"}}))
    user = make_live_user()
    small = start_runner(url, services, runner_token, models_dir, tmp_path, runner_id=f"small-{model[-6:]}",
                         text_model="", image_model=model,
                         extra_env={"HELIX_RUNNER_MEMORY_BYTES": "128MiB", "HELIX_MEMORY_RECHECK_SECONDS": "0.5"})
    large = None
    try:
        small.wait_for_log("ready:", timeout=300)
        # The large runner has announced itself (it is down now): the fleet could hold the job.
        requests.post(f"{url}/api/v1/runner/register", headers=runner_auth(runner_token),
                      json={"runner_id": f"large-{model[-6:]}", "models": {"image": [model]},
                            "info": {"host_memory_bytes": 4 * GIB}}, timeout=10).raise_for_status()
        r = requests.post(f"{url}/api/v1/sessions", headers=user.headers,
                          data={"mode": "finetune", "type": "image", "model_name": model, "training_steps": "4",
                                "a.png": "a red and blue flag"},
                          files=[("files", (name, _striped())) for name in ("a.png", "b.png")], timeout=30)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        small.wait_for_log("left job interaction-", timeout=60)
        turn = wait_for_session(url, user, sid, timeout=30,
                                until=lambda s: "memory" in s["interactions"][-1].get("waiting_reason", ""))
        turn = turn["interactions"][-1]
        assert turn["queue_position"] == 0 and turn["waiting_reason"].startswith(
            f"waiting for memory on runner small-{model[-6:]}: needs 256 MiB of host memory, this runner has 128 MiB")
        large = start_runner(url, services, runner_token, models_dir, tmp_path, runner_id=f"large-{model[-6:]}",
                             text_model="", image_model=model)
        done = wait_for_session(url, user, sid, timeout=240)["interactions"][-1]
        assert done["state"] == "complete" and done["runner"] == f"large-{model[-6:]}", done
        assert "training of" not in small.log() and "Traceback" not in small.log()
    finally:
        for proc in (small, large):
            if proc is not None:
                proc.stop()
        control_plane.stop()


def test_a_fine_tune_does_not_hold_up_chats_and_cancel_stops_its_training(live_server, runner, make_live_user):
    user = make_live_user()
    client = sdk(live_server, user)
    job = client.fine_tuning.jobs.create(model=TEXT_MODEL, training_file=upload(client, examples()).id,
                                         hyperparameters={"n_epochs": 100, "batch_size": 1})
    sid = job.id.removeprefix("ftjob-")
    deadline = time.monotonic() + 240
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data):
        assert time.monotonic() < deadline, client.fine_tuning.jobs.retrieve(job.id)
        time.sleep(0.5)
    # Training runs on the runner's fine-tune worker; a chat goes to its text workers meanwhile.
    started = time.monotonic()
    chat = requests.post(f"{live_server}/api/v1/sessions", headers=user.headers,
                         data={"input": "still there?", "mode": "inference", "type": "text", "max_tokens": "8"}).json()
    reply = wait_for_session(live_server, user, chat["id"], timeout=30)["interactions"][-1]
    assert reply["state"] == "complete" and time.monotonic() - started < 20
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"

    r = requests.post(f"{live_server}/api/v1/sessions/{sid}/cancel", headers=user.headers, timeout=10)
    assert r.status_code == 200 and r.json()["interactions"][-1]["status"] == "cancelled"
    interaction_id = r.json()["interactions"][-1]["id"]
    runner.wait_for_log(f"training of {interaction_id} stopped", timeout=10)
    # The training process is gone, and its memory with it.
    trainers = [p for p in psutil.Process(runner.proc.pid).children(recursive=True)
                if "runner.training.lora" in " ".join(p.cmdline())]
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in trainers if p.is_running()), trainers
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)
    assert requests.post(f"{live_server}/api/v1/sessions/{sid}/cancel", headers=user.headers,
                         timeout=10).json()["interactions"][-1]["status"] == "cancelled"

