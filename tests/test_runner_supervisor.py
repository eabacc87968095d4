"""A runner's supervisor keeps its own processes alive: a worker process that dies is started again
and the job it held runs again (the reconciler queues it once the dead worker's heartbeat lapses)
and completes once; a vLLM server that dies is started again and serves the next reply."""
from __future__ import annotations

import os
import signal
import time
import uuid

import psutil
import psycopg
import pytest
import requests
from psycopg.rows import dict_row
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from controlplane.accounts import store as accounts
from shared.jobs import job_id_for
from tests.conftest import User, freeze, start_control_plane, start_runner, thaw, vllm_server, wait_for_session

MODEL = "helix/tiny-chat-supervised"  # served by this module's runner alone


@pytest.fixture()
def supervised(services, models_dir, tmp_path):
    """A control plane reconciling every second, a user, and a runner of their own."""
    url, plane = start_control_plane(services, tmp_path, HELIX_RECONCILE_INTERVAL="1", HELIX_TEXT_MODELS=MODEL)
    with psycopg.connect(services["database_url"], row_factory=dict_row, autocommit=True) as conn:
        row = accounts.create_user(conn, f"sup-{uuid.uuid4().hex[:8]}@example.com")
        user = User(row, accounts.create_api_key(conn, row["id"], "k")[1])
        token = accounts.create_runner_token(conn, f"supervised-{uuid.uuid4().hex[:8]}")[1]
    runner = start_runner(url, services, token, models_dir, tmp_path, runner_id=f"sup-{uuid.uuid4().hex[:6]}",
                          text_model=MODEL, extra_env={"HELIX_TEXT_WORKERS": "2", "HELIX_FINETUNE_WORKERS": "0"})
    try:
        runner.wait_for_log("ready:", timeout=300)
        yield url, user, runner
    finally:
        runner.stop()
        plane.stop()


def _chat(url: str, user: User, text: str) -> dict:
    r = requests.post(f"{url}/api/v1/sessions", headers=user.headers, timeout=30,
                      data={"input": text, "mode": "inference", "type": "text", "model_name": MODEL})
    assert r.status_code == 201, r.text
    return r.json()


def _text_worker(runner) -> psutil.Process:
    """The runner's text worker process: its child that is not vLLM."""
    found = [p for p in psutil.Process(runner.proc.pid).children()
             if "vllm.entrypoints" not in " ".join(p.cmdline())]
    assert len(found) == 1, found
    return found[0]


def _replacement(runner, dead_pid: int, timeout: float = 30):
    """The vLLM server the supervisor started in place of `dead_pid`, as soon as it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            server = vllm_server(runner)
            if server.pid != dead_pid:
                return server
        except (AssertionError, psutil.Error):
            pass  # none between the old one's end and the new one's start
        time.sleep(0.05)
    raise TimeoutError(f"no vLLM started in place of {dead_pid} within {timeout}s")


@pytest.mark.timeout(420)
def test_a_dead_worker_or_vllm_is_started_again_and_the_held_job_completes_once(supervised, services):
    url, user, runner = supervised
    redis = Redis.from_url(services["redis_url"])

    # 1. The worker process dies holding a job: a new worker takes it up again.
    server = vllm_server(runner)
    freeze(server)  # the reply cannot end before the kill
    try:
        s = _chat(url, user, "hello")
        job = Job.fetch(job_id_for(s["interactions"][-1]["id"]), connection=redis, serializer=JSONSerializer)
        wait_for_session(url, user, s["id"], timeout=60, until=lambda x: job.get_status() == "started")
        worker = _text_worker(runner)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    finally:
        thaw(server)
    runner.wait_for_log("exited with -9; restarting", timeout=30)
    reply = wait_for_session(url, user, s["id"], timeout=120)["interactions"]
    assert [i["creator"] for i in reply] == ["user", "system"]
    assert reply[-1]["state"] == "complete" and reply[-1]["message"]
    assert reply[-1]["metadata"]["attempts"] == "2"  # the killed attempt, then the one that answered
    assert _text_worker(runner).pid != worker.pid

    # 2. vLLM dies, and its replacement dies too before it answers (a held request that crashes
    # it again, say): the supervisor starts a third, and the next reply is served by it.
    first = vllm_server(runner)
    os.killpg(first.pid, signal.SIGKILL)
    runner.wait_for_log("vLLM exited", timeout=30)
    second = _replacement(runner, first.pid)
    os.killpg(second.pid, signal.SIGKILL)
    runner.wait_for_log("vLLM died while starting", timeout=60)
    runner.wait_for_log("vLLM healthy again", timeout=240)
    assert runner.proc.poll() is None
    assert vllm_server(runner).pid not in (first.pid, second.pid)
    again = wait_for_session(url, user, _chat(url, user, "still there?")["id"], timeout=120)["interactions"][-1]
    assert again["state"] == "complete" and again["metadata"].get("attempts", "1") == "1"
