"""Plans and the limits held at the door (issue 19, items 2 and 3): kept in PostgreSQL, counted in
Redis by every replica together, refused with a 429 that says which limit and when it resets, and
answered with the x-ratelimit-* headers OpenAI's SDKs read. A refused request stores nothing."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from controlplane.accounts import store as accounts
from controlplane.usage import plans
from controlplane.usage.plans import Limits
from shared.runners import RUNNER_HEADER
from tests.conftest import User, app_with, hold_job, runner_auth

REPO = Path(__file__).resolve().parent.parent


def _plan(db, **limits) -> str:
    name = f"plan-{uuid.uuid4().hex[:8]}"
    plans.set_plan(db, name, Limits(**limits))
    return name


def _user_on(db, plan: str, key_plan: str | None = None) -> User:
    row = accounts.create_user(db, f"limited-{uuid.uuid4().hex[:10]}@example.com", plan=plan)
    return User(row, accounts.create_api_key(db, row["id"], "test", plan=key_plan)[1])


def _chat(client, user, **fields):
    return client.post("/api/v1/sessions", headers=user.headers,
                       data={"input": "hello", "mode": "inference", "type": "text", **fields})


def _sessions(client, user) -> int:
    return len(client.get("/api/v1/sessions", headers=user.headers).get_json()["sessions"])


@pytest.fixture(scope="module")
def replicas(config, tmp_path_factory):
    """Two control-plane apps on one database and one Redis: what two replicas share."""
    return app_with(config, tmp_path_factory), app_with(config, tmp_path_factory)


def test_100_requests_racing_a_limit_of_10_take_exactly_10_across_two_replicas(replicas, db):
    user = _user_on(db, _plan(db, requests_per_minute=10))
    clients = [app.test_client() for app in replicas]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda n: _chat(clients[n % 2], user, input=f"race {n}"), range(100)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 10 and statuses.count(429) == 90, statuses
    refused = next(a for a in answers if a.status_code == 429)
    body = refused.get_json()
    assert body["limit"] == "requests_per_minute" and 1 <= body["resets_in_seconds"] <= 6, body
    assert "10 requests per minute" in body["error"] and "retry in" in body["error"], body
    assert 1 <= int(refused.headers["Retry-After"]) <= 6 and int(refused.headers["retry-after-ms"]) > 0
    assert refused.headers["x-ratelimit-limit-requests"] == "10"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # A refused request stored nothing: ten sessions, one per request let in.
    assert _sessions(clients[0], user) == 10
    # Every answer of a limited route says what is left; after a bucket's refill time one more fits.
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in answers if a.status_code == 201)
    assert remaining == list(range(10)), remaining


def test_a_token_budget_is_charged_from_max_tokens_refunded_on_a_4xx_and_made_good_at_the_end(
        client, db, api_runner_token):
    user = _user_on(db, _plan(db, tokens_per_minute=1000))
    first = _chat(client, user, max_tokens="700")
    assert first.status_code == 201, first.get_json()
    left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert first.headers["x-ratelimit-limit-tokens"] == "1000" and 250 <= left <= 300, left  # 700 + the body
    # More than is left waits; more than the whole budget is never let in, and says so.
    over = _chat(client, user, max_tokens="400")
    assert over.status_code == 429 and over.get_json()["limit"] == "tokens_per_minute", over.get_json()
    never = _chat(client, user, max_tokens="2000")
    assert never.status_code == 429 and never.headers["x-should-retry"] == "false"
    assert "lower max_tokens" in never.get_json()["error"]
    # A request refused after its charge (a bad field) gets its tokens back.
    bad = _chat(client, user, max_tokens="100", temperature="hot")
    assert bad.status_code == 400
    again = _chat(client, user, max_tokens="100")
    assert again.status_code == 201, again.get_json()
    assert int(again.headers["x-ratelimit-remaining-tokens"]) >= left - 130

    # The first reply ends having used 30 tokens, not 700-odd: the difference comes back.
    runner = {**runner_auth(api_runner_token), RUNNER_HEADER: "usage-runner"}
    assert client.post("/api/v1/runner/register", headers=runner,
                       json={"runner_id": "usage-runner", "models": {"text": []}}).status_code == 200
    sid, iid = first.get_json()["id"], first.get_json()["interactions"][-1]["id"]
    hold_job(client.application.config["HELIX"].redis_url, iid, "usage-runner")
    final = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}", headers=runner, json={
        "runner": "usage-runner", "state": "complete", "message": "Hi", "final": True,
        "metadata": {"usage": {"prompt_tokens": 20, "completion_tokens": 10}}})
    assert final.status_code == 200, final.get_json()
    after = _chat(client, user, max_tokens="500")
    assert after.status_code == 201, after.get_json()  # would not fit without the 670 given back


def test_images_per_day_count_images_and_a_refused_request_uses_none(client, db, api_runner_token):
    from tests.test_image_budget_api import BUDGET

    model = f"acme/sd-{uuid.uuid4().hex[:6]}"
    assert client.post("/api/v1/runner/register", headers=runner_auth(api_runner_token), json={
        "runner_id": f"img-{model[-6:]}", "models": {"image": [model]}, "info": BUDGET.to_info()}).status_code == 200
    user = _user_on(db, _plan(db, images_per_day=3))

    def images(n: int, **form):
        return client.post("/api/v1/sessions", headers=user.headers, data={
            "mode": "inference", "type": "image", "input": "a cat", "model_name": model, "num_images": str(n), **form})

    assert images(3, width="4096", height="4096").status_code == 400  # over the runners' budget: none used
    assert images(2).status_code == 201
    refused = images(2)
    assert refused.status_code == 429 and refused.get_json()["limit"] == "images_per_day", refused.get_json()
    assert "3 images per day" in refused.get_json()["error"] and int(refused.headers["Retry-After"]) <= 86400
    assert images(1).status_code == 201 and images(1).status_code == 429


def test_a_keys_own_plan_limits_that_key_and_not_its_user(client, db):
    user = _user_on(db, _plan(db, requests_per_minute=100), key_plan=_plan(db, requests_per_minute=1))
    other_key = accounts.create_api_key(db, user.id, "unlimited key")[1]
    assert _chat(client, user).status_code == 201
    refused = _chat(client, user)
    assert refused.status_code == 429 and "your key's plan" in refused.get_json()["error"]
    assert refused.headers["x-ratelimit-limit-requests"] == "1"  # the tightest of the two
    r = client.post("/api/v1/sessions", headers={"Authorization": f"Bearer {other_key}"},
                    data={"input": "hello", "mode": "inference", "type": "text"})
    assert r.status_code == 201 and r.headers["x-ratelimit-limit-requests"] == "100"


def test_queued_and_concurrent_jobs(db, api_runner_token, config, tmp_path_factory):
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from shared.jobs import WorkKind, queue_name

    # No runner serves this model: every job is queued in Redis, none taken; the third is refused.
    waiting = _user_on(db, _plan(db, queued_jobs=2))
    model = f"helix/limited-{uuid.uuid4().hex[:8]}"
    app = app_with(config, tmp_path_factory, text_models=[model])
    c = app.test_client()
    assert [_chat(c, waiting).status_code for _ in range(2)] == [201, 201]
    refused = _chat(c, waiting)
    assert refused.status_code == 429 and refused.get_json()["limit"] == "queued_jobs", refused.get_json()
    assert "2 jobs waiting" in refused.get_json()["error"] and refused.headers["Retry-After"]
    assert _sessions(c, waiting) == 2

    # Four workers, but a plan of one job at once: one queued, the rest held until it ends.
    busy = _user_on(db, _plan(db, concurrent_jobs=1))
    model = f"helix/limited-{uuid.uuid4().hex[:8]}"
    app = app_with(config, tmp_path_factory, text_models=[model])
    c = app.test_client()
    r = c.post("/api/v1/runner/register", headers=runner_auth(api_runner_token), json={
        "runner_id": f"runner-{model[-8:]}", "models": {"text": [model]},
        "state": {"workers": {"text-inference": 4}}})
    assert r.status_code == 200
    chats = [_chat(c, busy).get_json() for _ in range(3)]
    queue = Queue(queue_name(WorkKind.TEXT_INFERENCE, model), connection=Redis.from_url(config.redis_url),
                  serializer=JSONSerializer)
    assert len(queue.get_job_ids()) == 1
    held = c.get(f"/api/v1/sessions/{chats[2]['id']}", headers=busy.headers).get_json()["interactions"][-1]
    assert held["waiting_reason"] == "2 of your own jobs ahead", held
    assert c.post(f"/api/v1/sessions/{chats[0]['id']}/cancel", headers=busy.headers).status_code == 200
    assert len(queue.get_job_ids()) == 1  # the next one, released as the first ended


def test_v1_answers_a_limit_in_openais_shape_and_the_sdk_waits_as_told(config, db, tmp_path_factory, caplog):
    model = f"helix/limited-{uuid.uuid4().hex[:8]}"
    app = app_with(config, tmp_path_factory, text_models=[model])
    user = _user_on(db, _plan(db, requests_per_minute=60))  # one more each second
    transport = httpx.WSGITransport(app=app)
    impatient = openai.OpenAI(base_url="http://in-process/v1", api_key=user.key, max_retries=0,
                              http_client=httpx.Client(transport=transport))
    patient = openai.OpenAI(base_url="http://in-process/v1", api_key=user.key, max_retries=3,
                            http_client=httpx.Client(transport=transport))
    training = impatient.files.create(file=("train.jsonl", b'{"messages": [{"role": "user", "content": "a"},'
                                                          b' {"role": "assistant", "content": "b"}]}\n' * 10),
                                      purpose="fine-tune")

    def create(client):
        return client.fine_tuning.jobs.with_raw_response.create(model=model, training_file=training.id)

    # Drain the bucket, then one more: OpenAI's 429 (one that leaves the next call time to meet it too).
    while True:
        try:
            create(impatient)
        except openai.RateLimitError as err:
            refused = err
            if int(err.response.headers["retry-after-ms"]) >= 300:
                break
            time.sleep(int(err.response.headers["retry-after-ms"]) / 1000)
    assert refused.status_code == 429 and refused.code == "rate_limit_exceeded"
    assert refused.body["type"] == "rate_limit_error" and "requests per minute" in refused.body["message"]
    assert refused.response.headers["retry-after"] == "1"
    # The SDK, told to retry, waits what the 429 says (retry-after-ms, to the millisecond) and gets in.
    caplog.set_level(logging.INFO, logger="openai")
    started = time.monotonic()
    answer = create(patient)
    waited = time.monotonic() - started
    told = [float(m.group(1)) for r in caplog.records
            if (m := re.search(r"Retrying request in ([0-9.]+) seconds", r.getMessage()))]
    assert len(told) == 1 and 0 < told[0] <= 1.0, told
    assert answer.http_response.status_code == 200 and told[0] <= waited < told[0] + 5
    assert answer.headers["x-ratelimit-limit-requests"] == "60"


def test_the_admin_dashboard_shows_plans_and_who_is_on_them(client, db):
    name = _plan(db, requests_per_minute=5, images_per_day=3)
    member = _user_on(db, name)
    admin_row = accounts.create_user(db, f"admin-{uuid.uuid4().hex[:10]}@example.com", is_admin=True)
    admin = User(admin_row, accounts.create_api_key(db, admin_row["id"], "test")[1])
    shown = client.get("/api/v1/dashboard", headers=admin.headers).get_json()["plans"]
    plan = next(p for p in shown if p["name"] == name)
    assert plan["limits"] == {"requests_per_minute": 5, "images_per_day": 3}
    assert plan["users"] == 1 and plan["members"] == [member.row["email"]]
    assert shown[0]["name"] == "default"


def _cli(config, *args: str) -> subprocess.CompletedProcess:
    env = {"DATABASE_URL": config.database_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_the_cli_sets_and_lists_plans_and_puts_users_on_them(config, db):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    email = f"cli-plan-{uuid.uuid4().hex[:8]}@example.com"
    made = _cli(config, "plans", "set", name, "--requests-per-minute", "30", "--tokens-per-minute", "0")
    assert made.returncode == 0 and "created plan" in made.stdout and "requests per minute 30" in made.stdout, made
    assert _cli(config, "users", "create", email, "--plan", name).returncode == 0
    listed = _cli(config, "plans", "list").stdout
    assert f"{name}  users 1  keys 0  requests per minute 30" in listed, listed
    # Bad input: a clear error, nothing changed.
    for args, says in ((("plans", "set", name, "--requests-per-minute", "-5"), "0 (unlimited) or more"),
                       (("plans", "set", name, "--queued-jobs", "many"), "whole number"),
                       (("plans", "set", "Bad Name!"), "a plan name is"),
                       (("users", "plan", email, "no-such-plan"), "no plan 'no-such-plan'"),
                       (("users", "plan", "nobody@example.com", name), "no user"),
                       (("users", "create", "x-" + email, "--plan", "no-such-plan"), "no plan"),
                       (("keys", "create", "--email", email, "--plan", "no-such-plan"), "no plan")):
        out = _cli(config, *args)
        assert out.returncode != 0 and says in out.stderr, (args, out.stderr)
    assert accounts.get_user_by_email(db, "x-" + email) is None
    assert next(p for p in plans.list_plans(db) if p["name"] == name)["limits"] == Limits(requests_per_minute=30)
    key_id = accounts.list_api_keys(db, accounts.get_user_by_email(db, email)["id"])[0]["id"]
    assert _cli(config, "keys", "plan", key_id, name).returncode == 0
    assert db.execute("SELECT plan FROM api_keys WHERE id = %s", (key_id,)).fetchone()["plan"] == name
    assert "no API key" in _cli(config, "keys", "plan", "no-such-key", name).stderr
    assert _cli(config, "keys", "plan", key_id, "-").returncode == 0
    assert db.execute("SELECT plan FROM api_keys WHERE id = %s", (key_id,)).fetchone()["plan"] is None
    moved = _cli(config, "users", "plan", email, plans.DEFAULT_PLAN)
    assert moved.returncode == 0, moved.stderr
    assert db.execute("SELECT plan FROM users WHERE email = %s", (email,)).fetchone()["plan"] == "default"


def test_a_users_live_streams_are_counted_across_replicas_and_a_dead_processs_lapse(config, monkeypatch):
    from redis import Redis

    from controlplane.errors import TooManyRequests
    from controlplane.sessions import events

    redis = Redis.from_url(config.redis_url)
    one, other = events.StreamSlots(10, 2, redis), events.StreamSlots(10, 2, redis)  # two replicas
    user = f"streams-{uuid.uuid4().hex[:8]}"
    first, _ = one.acquire(user), other.acquire(user)
    with pytest.raises(TooManyRequests, match="you have 2 live event streams open"):
        other.acquire(user, "s1")
    first()
    first()  # given back once, however often called
    third = other.acquire(user)
    with pytest.raises(TooManyRequests):
        one.acquire(user)
    # A plan may allow fewer than the server does.
    planned = f"streams-{uuid.uuid4().hex[:8]}"
    one.acquire(planned, plan_limit=1)
    with pytest.raises(TooManyRequests):
        other.acquire(planned, plan_limit=1)
    # A process that dies holding a slot: its lease lapses (no one renews it), the slot comes back.
    monkeypatch.setattr(events, "STREAM_LEASE_MS", 300)
    dying, lapsing = events.StreamSlots(10, 1, redis), f"streams-{uuid.uuid4().hex[:8]}"
    dying.acquire(lapsing)
    dying._held.clear()  # gone with its process: nothing renews it
    with pytest.raises(TooManyRequests):
        one.acquire(lapsing, plan_limit=1)
    time.sleep(0.4)
    one.acquire(lapsing, plan_limit=1)()
    third()
