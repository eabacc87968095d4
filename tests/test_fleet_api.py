"""Fleet visibility on the in-process app: runner tokens listed and revoked (refused on the very
next request), runner state reports checked and stored, runners shown gone, the admins' dashboard
(queues, runners, scheduling decisions), /metrics and request ids."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import uuid

import pytest

from controlplane.accounts import store as accounts
from shared import logs
from tests.conftest import REPO, User, hold_job, runner_auth

STATE = {"version": "0.1.0", "report_interval": 5.0,
         "models": [{"type": "text", "name": "acme/m", "state": "loaded"}],
         "adapters": {"text": ["lora-abc"]},
         "memory": {"host": {"total_bytes": 8 * 2**30, "free_bytes": 2**30},
                    "gpu": [{"index": 0, "name": "H100", "total_bytes": 80 * 2**30, "free_bytes": 70 * 2**30}]},
         "jobs": {"text-inference": 2}, "workers": {"text-inference": 64}}


def register(client, headers, runner_id, models=None, state=None):
    return client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": runner_id, "models": models or {"text": []}, "state": state or {}})


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", "runners", *args], cwd=REPO,
                          env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True)


@pytest.fixture()
def token(db):
    name = f"fleet-{uuid.uuid4().hex[:8]}"
    return name, accounts.create_runner_token(db, name)[1]


@pytest.fixture()
def admin(db) -> User:
    row = accounts.create_user(db, f"admin-{uuid.uuid4().hex[:10]}@example.com", is_admin=True)
    return User(row, accounts.create_api_key(db, row["id"], "test")[1])


def test_tokens_are_listed_and_a_revoked_one_is_refused_on_the_next_request(client, user, config, token):
    name, secret = token
    headers = runner_auth(secret, f"{name}-r")
    assert register(client, headers, f"{name}-r").status_code == 200
    listed = cli(config.database_url, "tokens")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(name + " "))
    assert "runners 1" in line and "created " in line and "last seen 20" in line and line.endswith("live"), line
    again = cli(config.database_url, "token", name)
    assert again.returncode != 0 and "exists" in again.stderr  # a name says which token to revoke

    sid = client.post("/api/v1/sessions", headers=user.headers,
                      data={"input": "hi", "mode": "inference", "type": "text"}).json["id"]
    assert client.get(f"/api/v1/runner/sessions/{sid}/files?path=x", headers=headers).status_code != 401
    revoked = cli(config.database_url, "revoke", name)
    assert revoked.returncode == 0 and f"revoked runner token {name!r}" in revoked.stdout, revoked.stderr
    # At once: no cached lookup lets the next request through, on any runner route.
    r = register(client, headers, f"{name}-r")
    assert r.status_code == 401 and "revoked" in r.json["error"]
    r = client.get(f"/api/v1/runner/sessions/{sid}/files?path=x", headers=headers)
    assert r.status_code == 401
    line = next(line for line in cli(config.database_url, "tokens").stdout.splitlines() if line.startswith(name + " "))
    assert "revoked 20" in line
    unknown = cli(config.database_url, "revoke", "no-such-token")
    assert unknown.returncode != 0 and "no live runner token" in unknown.stderr


def test_a_revoked_tokens_updates_are_refused_mid_job(client, user, db, token):
    name, secret = token
    runner = f"{name}-busy"
    headers = runner_auth(secret, runner)
    assert register(client, headers, runner).status_code == 200
    s = client.post("/api/v1/sessions", headers=user.headers, data={"input": "hi", "mode": "inference", "type": "text"}).json
    sid, iid = s["id"], s["interactions"][-1]["id"]
    hold_job(client.application.config["HELIX"].redis_url, iid, runner)
    url = f"/api/v1/runner/sessions/{sid}/interactions/{iid}"
    assert client.post(url, headers=headers, json={"delta": "Hel"}).status_code == 200
    accounts.revoke_runner_tokens(db, name)
    assert client.post(url, headers=headers, json={"delta": "lo"}).status_code == 401
    assert client.post(url, headers=headers, json={"final": True, "message": "x"}).status_code == 401
    assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).json["interactions"][-1]["finished"] is False


def test_reported_state_is_stored_and_shown_on_the_dashboard(client, db, admin, user, token, config):
    name, secret = token
    headers = runner_auth(secret)
    assert register(client, headers, f"{name}-s", {"text": ["acme/m"]}, STATE).status_code == 200
    assert db.execute("SELECT state FROM runners WHERE id = %s", (f"{name}-s",)).fetchone()["state"] == STATE

    assert client.get("/api/v1/dashboard", headers=user.headers).status_code == 403
    assert client.get("/api/v1/dashboard").status_code == 401
    board = client.get("/api/v1/dashboard", headers=admin.headers)
    assert board.status_code == 200, board.json
    runner = next(r for r in board.json["runners"] if r["id"] == f"{name}-s")
    assert runner["status"] == "alive" and runner["state"] == STATE and runner["token"] == name
    assert board.json["runner_gone_seconds"] == config.runner_gone_seconds

    gone_before = _sample(client, 'helix_runners{status="gone"}')
    db.execute("UPDATE runners SET last_seen = now() - make_interval(secs => %s) WHERE id = %s",
               (config.runner_gone_seconds + 1, f"{name}-s"))
    assert _sample(client, 'helix_runners{status="gone"}') == gone_before + 1
    runner = next(r for r in client.get("/api/v1/dashboard", headers=admin.headers).json["runners"]
                  if r["id"] == f"{name}-s")
    assert runner["status"] == "gone" and runner["seconds_since_seen"] > config.runner_gone_seconds
    listed = cli(config.database_url, "list").stdout
    line = next(line for line in listed.splitlines() if line.startswith(f"{name}-s "))
    assert " gone " in line and "host 1.0/8.0 GiB free" in line and "gpu0 70.0/80.0 GiB free" in line, line
    assert "text-inference=2" in line and "version 0.1.0" in line


@pytest.mark.parametrize("state, fragment", [
    ([1], "state: Input should be a valid dictionary"),
    ({"cpu": 1}, "state.cpu: unknown field"),
    ({"version": 5}, "version"),
    ({"memory": {"host": {"free_bytes": -1}}}, "memory.host.free_bytes"),
    ({"memory": {"host": {"free_bytes": "lots"}}}, "memory.host.free_bytes"),
    ({"memory": {"gpu": [{"free_bytes": 1.5}]}}, "state.memory.gpu[0].free_bytes"),
    ({"memory": {"gpu": [{}] * 17}}, "state.memory.gpu: List should have at most 16 items"),
    ({"models": [{"type": "text", "name": "m", "state": "dancing"}]}, "state.models[0].state"),
    ({"models": [{"type": "text"}]}, "state.models[0].name: Field required"),
    ({"jobs": {"text-inference": True}}, "state.jobs.text-inference"),
    ({"jobs": {f"k{i}": 1 for i in range(17)}}, "state.jobs: Dictionary should have at most 16 items"),
    ({"adapters": {"text": ["x" * 201]}}, "state.adapters.text[0]"),
    ({"adapters": {"text": ["a"] * 65}}, "state.adapters.text: List should have at most 64 items"),
    ({"report_interval": 0}, "report_interval"),
    ({"version": "x" * 64, "adapters": {"text": ["y" * 200] * 64, "image": ["z" * 200] * 64}}, "at most 16384 bytes"),
])
def test_junk_state_is_a_400_naming_what_is_wrong(client, token, state, fragment):
    r = register(client, runner_auth(token[1]), f"{token[0]}-junk", state=state)
    assert r.status_code == 400 and fragment in r.json["error"], r.json


def test_the_dashboard_shows_queues_and_who_took_what_after_how_long(client, admin, user, token):
    name, secret = token
    runner = f"{name}-q"
    headers = runner_auth(secret, runner)
    model = f"acme/q-{uuid.uuid4().hex[:8]}"
    assert register(client, headers, runner, {"text": [model]}).status_code == 200
    turns = []
    for _ in range(2):
        s = client.post("/api/v1/sessions", headers=user.headers,
                        data={"input": "hi", "mode": "inference", "type": "text", "model_name": model}).json
        turns.append((s["id"], s["interactions"][-1]["id"]))
    time.sleep(0.3)
    board = client.get("/api/v1/dashboard", headers=admin.headers).json
    queue = next(q for q in board["queues"] if q["model"] == model)
    # A runner that reported no workers: nothing to share, nothing held back (tests/test_fair_share.py).
    assert queue == {**queue, "name": f"helix:text-inference:{model}", "kind": "text-inference", "length": 2,
                     "held": 0}
    assert queue["oldest_wait_seconds"] >= 0.3

    (sid, iid), _ = turns
    hold_job(client.application.config["HELIX"].redis_url, iid, runner)
    url = f"/api/v1/runner/sessions/{sid}/interactions/{iid}"
    for update in ({"message": "", "progress": 0}, {"delta": "a"}, {"delta": "b"}):
        assert client.post(url, headers=headers, json=update).status_code == 200
    decisions = client.get("/api/v1/dashboard?decisions=500", headers=admin.headers).json["decisions"]
    mine = [d for d in decisions if d["interaction_id"] == iid]
    assert len(mine) == 1, mine  # one decision per attempt, not one per update
    assert mine[0]["runner"] == runner and mine[0]["session_id"] == sid and mine[0]["waited_seconds"] >= 0.3
    assert mine[0]["queue"] == f"helix:text-inference:{model}"
    assert decisions.index(mine[0]) == 0  # newest first
    assert client.get("/api/v1/dashboard?decisions=1", headers=admin.headers).json["decisions"] == [mine[0]]
    samples = client.get("/metrics").get_data(as_text=True)
    assert f'helix_scheduling_wait_seconds_count{{queue="helix:text-inference:{model}"}} 1.0' in samples

    finished = _sample(client, 'helix_interactions_finished_total{state="complete"}')
    assert client.post(url, headers=headers, json={"final": True, "state": "complete", "message": "ab"}).status_code == 200
    assert _sample(client, 'helix_interactions_finished_total{state="complete"}') == finished + 1
    for bad in ("-1", "many", "501"):
        r = client.get(f"/api/v1/dashboard?decisions={bad}", headers=admin.headers)
        assert r.status_code == 400 and "decisions" in r.json["error"]


def _sample(client, name: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reconciler_checks_are_counted_by_result(client, user, app):
    from controlplane.runners.reconciler import Reconciler

    client.post("/api/v1/sessions", headers=user.headers, data={"input": "hi", "mode": "inference", "type": "text"})
    before = _sample(client, 'helix_reconciler_checks_total{result="queued"}')
    reconciler = Reconciler(app)
    reconciler.grace_seconds = 0
    queued = sum(1 for result in reconciler.run_once().values() if result == "queued")
    assert queued >= 1
    assert _sample(client, 'helix_reconciler_checks_total{result="queued"}') == before + queued


def test_metrics_count_requests_by_route_template_and_show_queues(client, user, app, monkeypatch):
    sid = client.post("/api/v1/sessions", headers=user.headers,
                      data={"input": "hi", "mode": "inference", "type": "text"}).json["id"]

    def polls() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        line = next((line for line in text.splitlines() if line.startswith("helix_http_requests_total{")
                     and 'route="/api/v1/sessions/<session_id>"' in line and 'status="200"' in line
                     and 'method="GET"' in line), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = polls()
    for _ in range(3):
        assert client.get(f"/api/v1/sessions/{sid}", headers=user.headers).status_code == 200
    assert polls() == before + 3  # one series for every session: the route's template, not its path
    text = client.get("/metrics").get_data(as_text=True)
    assert 'helix_interactions_unfinished{state="queued"}' in text
    assert 'helix_queue_length{kind="text-inference",model="helix/tiny-chat",queue="helix:text-inference:helix/tiny-chat"}' in text
    assert "helix_http_request_duration_seconds_bucket{" in text and 'helix_runners{status="alive"}' in text

    monkeypatch.setattr(app.config["HELIX"], "metrics_token", "s3cret")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_every_answer_carries_a_request_id_and_log_records_carry_the_ids(client, user, caplog):
    r = client.get("/api/v1/sessions", headers={**user.headers, "X-Request-Id": "trace-42"})
    assert r.headers["X-Request-Id"] == "trace-42"
    r = client.get("/api/v1/sessions", headers={**user.headers, "X-Request-Id": "bad id\u00e9"})
    assert len(r.headers["X-Request-Id"]) == 32  # not a plain token: a new id instead
    assert client.get("/nowhere").headers["X-Request-Id"]

    caplog.set_level(logging.INFO, logger="helix.access")
    with caplog.at_level(logging.INFO):
        r = client.post("/api/v1/sessions", headers={**user.headers, "X-Request-Id": "trace-43"},
                        data={"input": "hi", "mode": "inference", "type": "text"})
        sid = r.json["id"]
        client.delete(f"/api/v1/sessions/{sid}", headers={**user.headers, "X-Request-Id": "trace-44"})
    access = [rec for rec in caplog.records if rec.name == "helix.access"]
    assert any(rec.request_id == "trace-43" and rec.status == 201 for rec in access)
    deleted = next(rec for rec in access if rec.request_id == "trace-44")
    assert deleted.session_id == sid and deleted.method == "DELETE"
    iid = r.json["interactions"][-1]["id"]
    queued = next(rec for rec in caplog.records if rec.getMessage().startswith(f"queued job interaction-{iid}"))
    assert (queued.request_id, queued.session_id, queued.interaction_id) == ("trace-43", sid, iid)


def test_json_log_lines_carry_the_bound_ids():
    record = logging.LogRecord("runner.worker", logging.INFO, __file__, 1, "job %s done", ("j1",), None)
    with logs.bound(job_id="j1", interaction_id="i1", session_id=""):
        logs.ContextIds().filter(record)
    line = json.loads(logs.formatter("json").format(record))
    assert line["message"] == "job j1 done" and line["job_id"] == "j1" and line["interaction_id"] == "i1"
    assert "session_id" not in line and line["level"] == "INFO" and line["logger"] == "runner.worker"
    text = logs.formatter("text").format(record)
    assert text.endswith("job j1 done [interaction_id=i1 job_id=j1]")
    with pytest.raises(SystemExit, match="HELIX_LOG_FORMAT must be one of json, text"):
        logs.log_format({"HELIX_LOG_FORMAT": "xml"})


@pytest.mark.parametrize("build, env, fragment", [
    ("controlplane", {"HELIX_RUNNER_GONE_SECONDS": "0"}, "HELIX_RUNNER_GONE_SECONDS must be from 1"),
    ("controlplane", {"HELIX_ACCESS_LOG": "loud"}, "HELIX_ACCESS_LOG must be writes, all or off"),
    ("runner", {"HELIX_RUNNER_METRICS_PORT": "70000"}, "HELIX_RUNNER_METRICS_PORT must be a port"),
    ("runner", {"HELIX_REGISTER_INTERVAL": "0"}, "HELIX_REGISTER_INTERVAL must be from 0 to 3600"),
])
def test_fleet_settings_are_checked(build, env, fragment):
    from controlplane.config import Config
    from runner.config import RunnerConfig

    runner_env = {"HELIX_API_URL": "http://cp", "HELIX_RUNNER_TOKEN": "hr-x", "REDIS_URL": "redis://r"}
    with pytest.raises(SystemExit, match=fragment):
        Config.from_env(env) if build == "controlplane" else RunnerConfig.from_env({**runner_env, **env})
    defaults = Config.from_env({}), RunnerConfig.from_env(runner_env)
    assert (defaults[0].runner_gone_seconds, defaults[0].access_log, defaults[1].register_interval,
            defaults[1].metrics_port) == (15, "writes", 5, 0)


def test_the_state_a_supervisor_gathers_passes_the_control_planes_check(tmp_path):
    from runner.config import RunnerConfig
    from runner.supervisor import Supervisor
    from shared.runner_state import RunnerState

    config = RunnerConfig(api_url="http://cp", token="hr-x", redis_url="redis://127.0.0.1:1/0", runner_id="s",
                          text_model="acme/m", image_model="acme/i", work_dir=str(tmp_path))
    (tmp_path / "image-adapters" / "lora-1").mkdir(parents=True)
    state = Supervisor(config).collect_state()
    assert RunnerState.model_validate(state).stored() == state
    assert state["models"] == [{"type": "text", "name": "acme/m", "state": "starting"},
                               {"type": "image", "name": "acme/i", "state": "starting"}]
    assert state["adapters"] == {"image": ["lora-1"]} and state["memory"]["host"]["total_bytes"] > 0


def test_gpu_memory_is_read_from_nvidia_smi_where_nvml_is_missing(tmp_path, monkeypatch):
    from runner.state.report import GpuMemory

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, 81559, 80000'\necho '1, NVIDIA H100 80GB HBM3, 81559, 1024'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as on a machine without nvidia-ml-py
    gpus = GpuMemory().read()
    assert gpus == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "total_bytes": 81559 * 2**20, "free_bytes": 80000 * 2**20},
                    {"index": 1, "name": "NVIDIA H100 80GB HBM3", "total_bytes": 81559 * 2**20, "free_bytes": 1024 * 2**20}]
    from shared.runner_state import RunnerState

    assert RunnerState.model_validate({"memory": {"gpu": gpus}}).memory.gpu[1].free_bytes == 1024 * 2**20
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    broken = GpuMemory()
    assert broken.read() == [] and broken.read() == []  # no driver: none reported, not asked again
    monkeypatch.setenv("PATH", "/nonexistent")
    assert GpuMemory().read() == []


def test_gpu_memory_is_read_through_nvml_where_it_is_installed(monkeypatch):
    import types

    from runner.state.report import GpuMemory

    memory = types.SimpleNamespace(total=80 * 2**30, free=79 * 2**30, used=2**30)
    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1,
                                 nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
                                 nvmlDeviceGetMemoryInfo=lambda handle: memory,
                                 nvmlDeviceGetName=lambda handle: b"NVIDIA H100")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert GpuMemory().read() == [{"index": 0, "name": "NVIDIA H100", "total_bytes": 80 * 2**30,
                                   "free_bytes": 79 * 2**30}]
