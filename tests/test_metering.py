"""Metering (issue 19, item 4): each finished job's usage recorded once, against its user, the key
that asked for it, its model and session; read back by day, model or key, by the API and the CLI;
/metrics counts it by plan, never by user."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from controlplane.accounts import store as accounts
from controlplane.usage import plans
from controlplane.usage.plans import Limits
from shared.runners import RUNNER_HEADER
from tests.conftest import User, app_with, hold_job, runner_auth

REPO = Path(__file__).resolve().parent.parent
RUNNER = "metering-runner"


@pytest.fixture()
def runner(client, api_runner_token) -> dict[str, str]:
    headers = {**runner_auth(api_runner_token), RUNNER_HEADER: RUNNER}
    assert client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": RUNNER, "models": {"text": []}}).status_code == 200
    return headers


def _answer(client, runner, user: User, prompt_tokens: int, completion_tokens: int, key: str | None = None) -> str:
    """A chat whose reply a runner finishes having used these tokens; returns the session id."""
    headers = {"Authorization": f"Bearer {key}"} if key else user.headers
    s = client.post("/api/v1/sessions", headers=headers,
                    data={"input": "hello", "mode": "inference", "type": "text"}).get_json()
    sid, iid = s["id"], s["interactions"][-1]["id"]
    hold_job(client.application.config["HELIX"].redis_url, iid, RUNNER)
    url = f"/api/v1/runner/sessions/{sid}/interactions/{iid}"
    final = {"runner": RUNNER, "state": "complete", "message": "Hi", "final": True,
             "metadata": {"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}}
    assert client.post(url, headers=runner, json={"runner": RUNNER, "progress": 1}).status_code == 200
    assert client.post(url, headers=runner, json=final).status_code == 200
    assert client.post(url, headers=runner, json=final).status_code == 409  # a second final changes nothing
    return sid


def test_each_finished_reply_is_recorded_once_and_read_back_by_day_model_and_key(client, runner, db, config):
    plan = f"metered-{uuid.uuid4().hex[:6]}"
    plans.set_plan(db, plan, Limits())
    row = accounts.create_user(db, f"metered-{uuid.uuid4().hex[:8]}@example.com", plan=plan)
    key_row, key = accounts.create_api_key(db, row["id"], "script")
    user = User(row, accounts.create_api_key(db, row["id"], "laptop")[1])
    _answer(client, runner, user, 20, 10)
    _answer(client, runner, user, 5, 7, key=key)

    by_day = client.get("/api/v1/usage", headers=user.headers).get_json()
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert by_day["group_by"] == "day" and by_day["plan"] == {"name": plan, "limits": {}}
    assert by_day["data"] == [{"day": today, "jobs": 2, "prompt_tokens": 25, "completion_tokens": 17,
                               "total_tokens": 42, "images": 0, "runner_seconds": by_day["data"][0]["runner_seconds"],
                               "training_tokens": 0, "stored_bytes": 0, "credits": 0.0}]  # no price table: free
    assert by_day["data"][0]["runner_seconds"] >= 0 and by_day["totals"]["total_tokens"] == 42
    by_key = client.get("/api/v1/usage?group_by=key", headers=user.headers).get_json()["data"]
    assert {g["key"]: g["total_tokens"] for g in by_key}[key_row["id"]] == 12
    by_model = client.get("/api/v1/usage?group_by=model", headers=user.headers).get_json()["data"]
    assert [g["jobs"] for g in by_model] == [2]
    # Nothing before the work was done; a period is checked.
    assert client.get("/api/v1/usage?from=2020-01-01&to=2020-01-02", headers=user.headers).get_json()["data"] == []
    for query, says in (("from=yesterday", "'from' must be a date"), ("from=2026-12-05&to=2026-12-01", "before"),
                        ("from=2020-01-01&to=2026-01-01", "at most 366 days"), ("group_by=color", "unknown group_by"),
                        ("group_by=user", "unknown group_by")):
        r = client.get(f"/api/v1/usage?{query}", headers=user.headers)
        assert r.status_code == 400 and says in r.get_json()["error"], (query, r.get_json())
    assert client.get("/api/v1/usage?all=true", headers=user.headers).status_code == 403
    admin_row = accounts.create_user(db, f"admin-{uuid.uuid4().hex[:8]}@example.com", is_admin=True)
    admin = User(admin_row, accounts.create_api_key(db, admin_row["id"], "k")[1])
    everyone = client.get("/api/v1/usage?all=true", headers=admin.headers).get_json()
    assert everyone["group_by"] == "user" and {"user": row["id"], "total_tokens": 42}.items() <= next(
        g for g in everyone["data"] if g["user"] == row["id"]).items()

    # Counted by plan in /metrics, never by user.
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'helix_usage_total{{kind="text-inference",plan="{plan}",unit="completion_tokens"}} 17.0' in metrics
    assert row["id"] not in metrics

    # The CLI says the same; an admin sees everyone's by user.
    env = {"DATABASE_URL": config.database_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "controlplane.cli", "usage", "--email", row["email"]],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    total = out.stdout.strip().splitlines()[-1].split()
    assert total[:5] == ["total", "2", "25", "17", "0"], out.stdout
    everyone = subprocess.run([sys.executable, "-m", "controlplane.cli", "usage", "--from", "2026-01-01"],
                              cwd=REPO, env=env, capture_output=True, text=True)
    assert everyone.returncode == 0 and row["email"] in everyone.stdout, everyone.stderr
    bad = subprocess.run([sys.executable, "-m", "controlplane.cli", "usage", "--from", "soon"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "--from must be a date" in bad.stderr


def test_the_bytes_a_job_leaves_in_the_filestore_are_recorded_with_it(client, runner, user, db):
    s = client.post("/api/v1/sessions", headers=user.headers,
                    data={"input": "hello", "mode": "inference", "type": "text"}).get_json()
    sid, iid = s["id"], s["interactions"][-1]["id"]
    hold_job(client.application.config["HELIX"].redis_url, iid, RUNNER)
    url = f"/api/v1/runner/sessions/{sid}/interactions/{iid}"
    for name, size in (("a.bin", 1000), ("b.bin", 234)):
        r = client.post(f"{url}/files", headers=runner, content_type="multipart/form-data",
                        data={"file": (io.BytesIO(b"x" * size), name)})
        assert r.status_code == 201, r.json
    final = {"runner": RUNNER, "state": "complete", "message": "Hi", "final": True, "files": [r.json["path"]]}
    assert client.post(url, headers=runner, json=final).status_code == 200
    row = db.execute("SELECT stored_bytes, training_tokens FROM usage_records WHERE interaction_id = %s",
                     (iid,)).fetchone()
    assert row == {"stored_bytes": 1234, "training_tokens": 0}
    usage = client.get("/api/v1/usage", headers=user.headers).get_json()
    assert usage["totals"]["stored_bytes"] >= 1234
    assert usage["storage"]["used_bytes"] >= 1234 and usage["storage"]["storage_bytes"] is None  # no limit


def _priced_app(config, tmp_path_factory, api_runner_token, **changes):
    app = app_with(config, tmp_path_factory, prices={"*": {"completion_tokens": 0.5, "prompt_tokens": 0.1},
                                                      "text-finetune": {"runner_seconds": 2}}, **changes)
    client = app.test_client()
    headers = {**runner_auth(api_runner_token), RUNNER_HEADER: RUNNER}
    assert client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": RUNNER, "models": {"text": []}}).status_code == 200
    return app, client, headers


def test_credits_priced_by_the_table_stop_new_work_when_the_months_are_spent(config, tmp_path_factory, db,
                                                                              api_runner_token):
    app, client, runner = _priced_app(config, tmp_path_factory, api_runner_token)
    plan = f"credits-{uuid.uuid4().hex[:6]}"
    plans.set_plan(db, plan, Limits(monthly_credits=10))
    row = accounts.create_user(db, f"credits-{uuid.uuid4().hex[:8]}@example.com", plan=plan)
    user = User(row, accounts.create_api_key(db, row["id"], "k")[1])
    _answer(client, runner, user, 10, 14)  # 10 x 0.1 + 14 x 0.5 = 8 credits: 80%, warned
    usage = client.get("/api/v1/usage", headers=user.headers).get_json()
    assert usage["totals"]["credits"] == 8.0
    assert usage["month"]["credits"] == 8.0 and usage["month"]["monthly_credits"] == 10 and usage["month"]["warning"]
    _answer(client, runner, user, 0, 4)  # 10 credits: spent
    refused = client.post("/api/v1/sessions", headers=user.headers,
                          data={"input": "more", "mode": "inference", "type": "text"})
    body = refused.get_json()
    assert refused.status_code == 429 and body["code"] == "insufficient_quota", body
    assert "10 credits for this month are spent" in body["error"] and refused.headers["x-should-retry"] == "false"
    v1 = client.post("/v1/chat/completions", headers=user.headers,
                     json={"model": config.text_models[0], "messages": [{"role": "user", "content": "hi"}]})
    assert v1.status_code == 429 and v1.get_json()["error"]["type"] == "insufficient_quota"
    assert v1.get_json()["error"]["code"] == "insufficient_quota"
    assert _sessions_of(client, user) == 2  # the refused stored nothing


def _sessions_of(client, user) -> int:
    return len(client.get("/api/v1/sessions", headers=user.headers).get_json()["sessions"])


class _Receiver(BaseHTTPRequestHandler):
    """A billing system: answers the first delivery 500, then takes them."""

    received: list[tuple[dict, bytes]] = []
    fail_next = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        status = 500 if type(self).fail_next else 200
        type(self).fail_next = False
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_usage_webhook_is_signed_retried_and_delivers_each_record_once(config, tmp_path_factory, db,
                                                                           api_runner_token):
    from controlplane.usage.webhook import SIGNATURE_HEADER, UsageWebhook, signature

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, secret = f"http://127.0.0.1:{server.server_port}/usage", "a webhook secret of ours"
    try:
        app, client, runner = _priced_app(config, tmp_path_factory, api_runner_token,
                                          usage_webhook_url=url, usage_webhook_secret=secret)
        row = accounts.create_user(db, f"billed-{uuid.uuid4().hex[:8]}@example.com")
        user = User(row, accounts.create_api_key(db, row["id"], "k")[1])
        sid = _answer(client, runner, user, 3, 4)
        webhook = UsageWebhook(app, url, secret)
        assert webhook.run_once() == 0  # answered 500: waits to be tried again
        assert webhook.run_once() == 0  # not due yet (a second later)
        time.sleep(1.2)
        assert webhook.run_once() == 1
        assert webhook.run_once() == 0  # delivered once
        assert len(_Receiver.received) == 2
        (first_headers, first), (headers, body) = _Receiver.received
        assert headers[SIGNATURE_HEADER] == signature(secret, body) != signature("another secret", body)
        records = json.loads(body)["records"]
        assert json.loads(first)["records"][0]["id"] == records[0]["id"]  # the same id on a retry
        assert records[0]["session_id"] == sid and records[0]["email"] == row["email"]
        assert (records[0]["prompt_tokens"], records[0]["completion_tokens"], records[0]["credits"]) == (3, 4, 2.3)
    finally:
        server.shutdown()


def test_training_minutes_per_month_stop_new_fine_tunes_only(client, db, config):
    plan = f"training-{uuid.uuid4().hex[:6]}"
    plans.set_plan(db, plan, Limits(training_minutes_per_month=1))
    row = accounts.create_user(db, f"trainer-{uuid.uuid4().hex[:8]}@example.com", plan=plan)
    user = User(row, accounts.create_api_key(db, row["id"], "k")[1])
    # This month a runner trained one of their fine-tunes for 61 seconds (as its final report recorded).
    session = client.post("/api/v1/sessions", headers=user.headers,
                          data={"input": "hi", "mode": "inference", "type": "text"}).get_json()
    db.execute("INSERT INTO usage_records (interaction_id, stage, owner, session_id, model, kind, runner_seconds,"
               " delivered) VALUES (%s, 'finetune', %s, %s, 'm', 'text-finetune', 61, now())",
               (session["interactions"][-1]["id"], row["id"], session["id"]))
    refused = client.post("/api/v1/sessions", headers=user.headers, data={
        "mode": "finetune", "type": "text", "text": "Facts to learn. " * 20})
    body = refused.get_json()
    assert refused.status_code == 429 and body["limit"] == "training_minutes_per_month", body
    assert "1 training minutes for this month are used" in body["error"]
    assert client.post("/api/v1/sessions", headers=user.headers,  # chats go on
                       data={"input": "hi", "mode": "inference", "type": "text"}).status_code == 201
    usage = client.get("/api/v1/usage", headers=user.headers).get_json()
    assert usage["month"]["training_minutes"] == 1.02


def test_question_writing_is_recorded_when_data_preparation_ends(client, db, user, api_runner_token):
    headers = runner_auth(api_runner_token, "dataprep-metering")
    assert client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": "dataprep-metering", "models": {}}).status_code == 200
    s = client.post("/api/v1/sessions", headers=user.headers, content_type="multipart/form-data", data={
        "mode": "finetune", "type": "text", "files": [(io.BytesIO(b"Mira founded the Zorblat Library."), "a.txt")]}).json
    sid, iid = s["id"], s["interactions"][-1]["id"]
    hold_job(client.application.config["HELIX"].redis_url, iid, "dataprep-metering", stage="dataprep",
             kind="text-dataprep")
    url = f"/api/v1/runner/sessions/{sid}/interactions/{iid}/finetune/prepared"
    bad = client.post(url, headers=headers, json={"prompt_tokens": -1})
    assert bad.status_code == 400 and "prompt_tokens" in bad.json["error"]
    r = client.post(url, headers=headers, json={"prompt_tokens": 1200, "completion_tokens": 300})
    assert r.status_code == 200, r.json
    rows = db.execute("SELECT stage, kind, prompt_tokens, completion_tokens FROM usage_records"
                      " WHERE interaction_id = %s", (iid,)).fetchall()
    assert rows == [{"stage": "dataprep", "kind": "text-dataprep", "prompt_tokens": 1200, "completion_tokens": 300}]


def test_a_fine_tune_that_converged_early_is_charged_the_steps_it_took():
    """Automatic epochs stop once the examples are learned (runner/training/lora.py): 30 of 81
    planned steps charge 30/81 of the examples' tokens times the planned epochs."""
    from controlplane.usage.metering import trained_tokens

    run = {"train_tokens": 1000, "epochs": 27, "total_steps": 81}
    assert trained_tokens({"training_run": run}, complete=True) == 27_000
    converged = {"training_run": run, "training_converged": {"step": 30, "of": 81}}
    assert trained_tokens(converged, complete=True) == 27_000 * 30 // 81
    history = [{"step": s} for s in range(1, 41)]
    assert trained_tokens({"training_run": run, "training_history": history}, complete=False) == 27_000 * 40 // 81
