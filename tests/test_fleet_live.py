"""Fleet visibility on real processes: gunicorn's workers summed in one /metrics, and a real runner
that reports its state, serves its own metrics, logs the same ids as the control plane, shows as
gone within the stated time when killed (its reply then completes after a restart), and stops
when its token is revoked (its job is queued again)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import psutil
import psycopg
import pytest
import requests
from psycopg.rows import dict_row
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from controlplane.accounts import store as accounts
from controlplane.devstack.embedded import free_port
from controlplane.http.serving import gunicorn_command
from shared.jobs import job_id_for
from shared.processes import wait_for_port
from tests.conftest import (
    REPO,
    Process,
    User,
    freeze,
    start_control_plane,
    start_runner,
    thaw,
    vllm_server,
    wait_for_session,
)

MODEL = "helix/tiny-chat-fleet"
REPORT_SECONDS = 1
GONE_SECONDS = 3


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, by its name and labels as written."""
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain"), r.text[:300]
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in r.text.splitlines() if line and not line.startswith("#")}


def test_gunicorn_workers_are_summed_in_one_metrics_page(services, tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # an earlier run's file is wiped at start
    env = {**os.environ, "DATABASE_URL": services["database_url"], "REDIS_URL": services["redis_url"],
           "HELIX_RECONCILE_INTERVAL": "0", "HELIX_FILESTORE": str(tmp_path / "files"),
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc = Process(gunicorn_command(port, workers=2), env, tmp_path / "gunicorn.log")
    try:
        wait_for_port(port, 60, proc.proc)
        url = f"http://127.0.0.1:{port}"
        for _ in range(40):  # a new connection each: both workers answer some
            assert requests.get(f"{url}/healthz", timeout=30, headers={"Connection": "close"}).ok
        for _ in range(4):  # whichever worker answers the scrape counts every worker's requests
            samples = scrape(f"{url}/metrics")
            assert samples['helix_http_requests_total{method="GET",route="/healthz",status="200"}'] == 40
        pids = {f.name.split("_")[-1] for f in metrics_dir.glob("counter_*.db")}
        assert "1.db" not in pids
        print(f"\ncounters written by {len(pids)} gunicorn worker processes")
    finally:
        proc.stop()


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _job_status(redis, interaction_id: str) -> str:
    """The interaction's job status ("" for a moment while the reconciler replaces the dead
    attempt's job: it deletes that one, then queues the new one)."""
    try:
        return Job.fetch(job_id_for(interaction_id), connection=redis, serializer=JSONSerializer).get_status()
    except NoSuchJobError:
        return ""


def _runner_took(base_url: str, user: User, session_id: str, timeout: float = 60) -> str:
    return wait_for_session(base_url, user, session_id, timeout=timeout,
                            until=lambda s: bool(s["interactions"][-1]["runner"]))["interactions"][-1]["runner"]


def _dashboard_runner(base_url: str, admin: User, runner_id: str) -> dict:
    r = requests.get(f"{base_url}/api/v1/dashboard", headers=admin.headers, timeout=10)
    assert r.status_code == 200, r.text
    return next(x for x in r.json()["runners"] if x["id"] == runner_id)


@pytest.fixture()
def fleet(services, tmp_path):
    """A control plane of its own (runners gone after 3 s, reconciling every second), an admin and
    a user, and a runner token of its own."""
    url, proc = start_control_plane(services, tmp_path, HELIX_RUNNER_GONE_SECONDS=str(GONE_SECONDS),
                                    HELIX_RECONCILE_INTERVAL="1", HELIX_TEXT_MODELS=MODEL)
    with psycopg.connect(services["database_url"], row_factory=dict_row, autocommit=True) as conn:
        admin = accounts.create_user(conn, f"admin-{uuid.uuid4().hex[:8]}@example.com", is_admin=True)
        user = accounts.create_user(conn, f"user-{uuid.uuid4().hex[:8]}@example.com")
        token_name = f"fleet-live-{uuid.uuid4().hex[:8]}"
        token = accounts.create_runner_token(conn, token_name)[1]
        yield {"url": url, "proc": proc, "token": token, "token_name": token_name,
               "admin": User(admin, accounts.create_api_key(conn, admin["id"], "k")[1]),
               "user": User(user, accounts.create_api_key(conn, user["id"], "k")[1])}
    proc.stop()


def test_a_runner_reports_its_state_shows_gone_when_killed_and_stops_when_revoked(
        fleet, services, models_dir, tmp_path):
    url, admin, user = fleet["url"], fleet["admin"], fleet["user"]
    metrics_port = free_port()

    def start(log_dir):
        log_dir.mkdir()
        proc = start_runner(url, services, fleet["token"], models_dir, log_dir, runner_id="fleet-a", text_model=MODEL,
                            extra_env={"HELIX_TEXT_WORKERS": "2", "HELIX_REGISTER_INTERVAL": str(REPORT_SECONDS),
                                       "HELIX_RUNNER_METRICS_PORT": str(metrics_port), "HELIX_LOG_FORMAT": "json",
                                       "HELIX_FINETUNE_WORKERS": "0"})
        proc.wait_for_log("ready:", timeout=300)
        return proc

    def chat(text: str) -> dict:
        r = requests.post(f"{url}/api/v1/sessions", headers={**user.headers, "X-Request-Id": f"req-{text}"},
                          data={"input": text, "mode": "inference", "type": "text", "model_name": MODEL}, timeout=30)
        assert r.status_code == 201 and r.headers["X-Request-Id"] == f"req-{text}", r.text
        return r.json()

    s3 = None
    first = start(tmp_path / "first")
    server = vllm_server(first)
    try:
        # 1. A reply, and what the fleet shows of it.
        s1 = chat("one")
        iid1 = s1["interactions"][-1]["id"]
        assert wait_for_session(url, user, s1["id"], timeout=60)["interactions"][-1]["state"] == "complete"
        time.sleep(REPORT_SECONDS + 0.5)  # a report after the reply
        runner = _dashboard_runner(url, admin, "fleet-a")
        state = runner["state"]
        assert runner["status"] == "alive" and runner["seconds_since_seen"] <= GONE_SECONDS, runner
        assert state["models"] == [{"type": "text", "name": MODEL, "state": "loaded"}], state
        assert state["memory"]["host"]["total_bytes"] >= state["memory"]["host"]["free_bytes"] > 0
        assert "gpu" not in state["memory"] or state["memory"]["gpu"]  # absent without a GPU
        assert state["jobs"]["text-inference"] == 0 and state["workers"]["text-inference"] == 2
        assert state["version"] and state["adapters"] == {"text": []}
        board = requests.get(f"{url}/api/v1/dashboard", headers=admin.headers, timeout=10).json()
        decision = next(d for d in board["decisions"] if d["interaction_id"] == iid1)
        assert decision["runner"] == "fleet-a" and decision["waited_seconds"] >= 0 and decision["queue"].endswith(MODEL)

        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert samples['helix_runner_jobs_total{kind="text-inference",outcome="complete"}'] == 1
        assert samples[f'helix_runner_generated_tokens_total{{model="{MODEL}"}}'] > 0
        assert samples['helix_runner_model_loads_total{kind="text"}'] == 1
        assert samples['helix_runner_memory_bytes{device="host",kind="total"}'] > 0
        assert samples[f'helix_runner_model_loaded{{model="{MODEL}",state="loaded",type="text"}}'] == 1

        # One id followed across both sides' JSON logs.
        job_id = job_id_for(iid1)
        runner_lines = [r for r in _json_lines(first.log()) if r.get("interaction_id") == iid1]
        assert any(r["message"].startswith(f"job {job_id} (text-inference) complete") and r["job_id"] == job_id
                   and r["session_id"] == s1["id"] for r in runner_lines), first.log()[-3000:]
        plane_lines = [r for r in _json_lines(fleet["proc"].log()) if r.get("interaction_id") == iid1]
        assert any("runner fleet-a took interaction" in r["message"] and r.get("request_id") for r in plane_lines)
        assert any(r.get("request_id") == "req-one" and r["message"].startswith(f"queued job {job_id}")
                   for r in plane_lines)

        # 2. Killed mid-reply: gone within the stated time; the reply completes after a restart.
        freeze(server)
        s2 = chat("two")
        assert _runner_took(url, user, s2["id"]) == "fleet-a"
        deadline = time.monotonic() + 5 * REPORT_SECONDS
        while _dashboard_runner(url, admin, "fleet-a")["state"]["jobs"]["text-inference"] != 1:
            assert time.monotonic() < deadline, "the running job never showed in the runner's state"
            time.sleep(0.2)
        first.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first.proc.wait()
        while _dashboard_runner(url, admin, "fleet-a")["status"] != "gone":
            assert time.monotonic() - killed < GONE_SECONDS + REPORT_SECONDS + 2, "not shown gone in time"
            time.sleep(0.2)
        print(f"\nkilled runner shown gone after {time.monotonic() - killed:.1f}s (stated: {GONE_SECONDS}s)")
    finally:
        thaw(server)
        first.stop()
    second = start(tmp_path / "second")
    server = vllm_server(second)
    try:
        reply = wait_for_session(url, user, s2["id"], timeout=90)["interactions"][-1]
        assert reply["state"] == "complete" and reply["runner"] == "fleet-a" and reply["metadata"]["attempts"] == "2"
        assert _dashboard_runner(url, admin, "fleet-a")["status"] == "alive"

        # 3. Revoked mid-reply: the runner stops at once, its workers with it, and the job is queued again.
        workers = [p for p in psutil.Process(second.proc.pid).children() if p.pid != server.pid]
        assert workers, "the runner's worker processes"
        freeze(server)
        s3 = chat("three")
        iid3 = s3["interactions"][-1]["id"]
        assert _runner_took(url, user, s3["id"]) == "fleet-a"
        revoked = subprocess.run([sys.executable, "-m", "controlplane.cli", "runners", "revoke", fleet["token_name"]],
                                 cwd=REPO, env={**os.environ, "DATABASE_URL": services["database_url"]},
                                 capture_output=True, text=True)
        assert revoked.returncode == 0, revoked.stderr
        at = time.monotonic()
        second.wait_for_log("it was revoked", timeout=REPORT_SECONDS + 10)
        thaw(server)
        second.proc.wait(timeout=30)
        print(f"revoked runner stopped after {time.monotonic() - at:.1f}s")
        assert second.proc.returncode != 0 and "runner token revoked: this runner stopped" in second.log()
        assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        redis = Redis.from_url(services["redis_url"])
        deadline = time.monotonic() + 30
        while _job_status(redis, iid3) != "queued":
            assert time.monotonic() < deadline, "the revoked runner's job was not queued again"
            time.sleep(0.2)
        s = requests.get(f"{url}/api/v1/sessions/{s3['id']}", headers=user.headers, timeout=10).json()
        assert not s["interactions"][-1]["finished"]
        assert _dashboard_runner(url, admin, "fleet-a")["status"] == "gone"
        assert re.search(r"revoked", requests.post(
            f"{url}/api/v1/runner/register", json={"runner_id": "fleet-a", "models": {}},
            headers={"Authorization": f"Bearer {fleet['token']}"}, timeout=10).json()["error"])
    finally:
        thaw(server)
        second.stop()
        if s3 is not None:  # it waits for a runner of a model no other test serves
            requests.delete(f"{url}/api/v1/sessions/{s3['id']}", headers=user.headers, timeout=10)


def test_a_runner_of_the_previous_release_is_told_to_upgrade_and_stops(services, models_dir, tmp_path):
    """A control plane of the next release (its runner messages at the next version) refuses this
    release's runner: it stops at once, saying which side to upgrade, and takes no work."""
    from shared.wire import WIRE_VERSION

    (tmp_path / "next").mkdir()
    (tmp_path / "next" / "sitecustomize.py").write_text(
        "import shared.wire\nshared.wire.WIRE_VERSION += 1  # the next release's control plane\n")
    url, proc = start_control_plane(services, tmp_path, HELIX_TEXT_MODELS=MODEL,
                                    PYTHONPATH=f"{tmp_path / 'next'}{os.pathsep}{REPO}")
    try:
        with psycopg.connect(services["database_url"], row_factory=dict_row, autocommit=True) as conn:
            token = accounts.create_runner_token(conn, f"old-release-{uuid.uuid4().hex[:8]}")[1]
        old = start_runner(url, services, token, models_dir, tmp_path, runner_id="old-release", text_model=MODEL)
        assert old.proc.wait(timeout=120) != 0
        assert (f"this runner speaks version {WIRE_VERSION} of the runner API's messages" in old.log()
                and f"this control plane speaks {WIRE_VERSION + 1}: upgrade the runner" in old.log()), old.log()[-2000:]
    finally:
        proc.stop()
