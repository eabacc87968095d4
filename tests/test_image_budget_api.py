"""Image work budgets in the control plane: what runners may announce, the strictest one applies,
and the job timeout follows the request's work (real PostgreSQL and Valkey, no runner process;
tests/test_image_budget.py does it end to end against gunicorn and real runners)."""
from __future__ import annotations

import uuid

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from shared.image_budget import ImageBudget
from shared.jobs import job_id_for
from shared.runners import RUNNER_HEADER
from tests.conftest import hold_job, runner_auth

# A runner that takes up to 512x512 and does one 1-megapixel step in 2 s.
BUDGET = ImageBudget(max_pixels=512 * 512, max_seconds=60, seconds_per_megapixel_step=2.0,
                     seconds_per_megapixel=4.0, default_size=256, default_steps=20)


@pytest.fixture()
def runner_headers(api_runner_token):
    return runner_auth(api_runner_token)


def register(client, headers, model, info, runner_id=None):
    return client.post("/api/v1/runner/register", headers=headers, json={
        "runner_id": runner_id or f"img-{uuid.uuid4().hex[:8]}", "models": {"image": [model]}, "info": info})


def create(client, user, **form):
    return client.post("/api/v1/sessions", headers=user.headers,
                       data={"mode": "inference", "type": "image", "input": "a cat", **form})


@pytest.mark.parametrize("change, fragment", [
    ({"image_max_pixels": -1}, "image_max_pixels must be a whole number"),
    ({"image_max_pixels": 1.5e5}, "image_max_pixels must be a whole number"),
    ({"image_seconds_per_megapixel_step": 0}, "image_seconds_per_megapixel_step must be a number"),
    ({"image_max_seconds": True}, "image_max_seconds must be a number"),
    ({"image_default_steps": "30"}, "image_default_steps must be a whole number"),
    ({"image_seconds_per_megapixel": None}, "names all of"),
])
def test_a_bad_budget_is_refused(client, runner_headers, change, fragment):
    info = {k: v for k, v in {**BUDGET.to_info(), **change}.items() if v is not None}
    r = register(client, runner_headers, f"acme/sd-{uuid.uuid4().hex[:6]}", info)
    assert r.status_code == 400 and fragment in r.json["error"], r.json


def test_the_strictest_runner_budget_applies_and_sizes_the_timeout(client, user, runner_headers, config):
    model = f"acme/sd-{uuid.uuid4().hex[:6]}"
    assert register(client, runner_headers, model, BUDGET.to_info()).status_code == 200
    slower = ImageBudget(**{**BUDGET.__dict__, "max_pixels": 384 * 384, "seconds_per_megapixel_step": 4.0})
    assert register(client, runner_headers, model, slower.to_info()).status_code == 200

    r = create(client, user, model_name=model, width="512", height="512")  # fits the first, not the second
    assert r.status_code == 400 and "at most 147456 pixels" in r.json["error"], r.json
    r = create(client, user, model_name=model, width="384", height="384", steps="150", num_images="4")
    assert r.status_code == 400, r.json
    error = r.json["error"]
    assert "at most 60 s per request" in error and "at most 24 steps at this size" in error, error

    r = create(client, user, model_name=model, width="384", height="384", steps="20")
    assert r.status_code == 201, r.json
    expected = slower.job_timeout(384, 384, 20, 1)  # 3 x (0.147 MP x (20 x 4 s + 4 s)) + 10 + 60 s
    assert r.json["config"]["job_timeout"] == expected == 108
    job = Job.fetch(job_id_for(r.json["interactions"][-1]["id"]), connection=Redis.from_url(config.redis_url),
                    serializer=JSONSerializer)
    assert job.timeout == expected
    # defaults are the runners' own: 256x256 at 20 steps
    r = create(client, user, model_name=model, num_images="4")
    assert r.status_code == 201 and r.json["config"]["job_timeout"] == slower.job_timeout(256, 256, 20, 4)


def _answered_image_session(client, user, runner_headers, config, **fields) -> tuple[str, str, dict]:
    """An image session on a model of its own whose runner announced BUDGET, its first image
    answered; returns the model, the runner id and the creation's answer."""
    model = f"acme/sd-{uuid.uuid4().hex[:6]}"
    runner_id = f"img-{uuid.uuid4().hex[:8]}"
    assert register(client, runner_headers, model, BUDGET.to_info(), runner_id).status_code == 200
    r = create(client, user, model_name=model, **fields)
    assert r.status_code == 201, r.json
    sid, iid = r.json["id"], r.json["interactions"][-1]["id"]
    hold_job(config.redis_url, iid, runner_id, kind="image-inference")
    done = client.post(f"/api/v1/runner/sessions/{sid}/interactions/{iid}",
                       headers={**runner_headers, RUNNER_HEADER: runner_id}, json={"state": "complete", "final": True})
    assert done.status_code == 200, done.json
    return model, runner_id, r.json


def test_continuing_an_image_session_is_held_to_the_budget_of_now(client, user, runner_headers, config):
    model, runner_id, created = _answered_image_session(client, user, runner_headers, config,
                                                        width="512", height="512", steps="10")
    sid = created["id"]
    smaller = ImageBudget(**{**BUDGET.__dict__, "max_pixels": 256 * 256})
    assert register(client, runner_headers, model, smaller.to_info(), runner_id).status_code == 200
    r = client.put(f"/api/v1/sessions/{sid}", headers=user.headers, data={"input": "another"})
    assert r.status_code == 400 and "at most 65536 pixels" in r.json["error"], r.json


def test_a_continuation_s_own_image_fields_are_held_to_the_budget_and_size_its_timeout(
        client, user, runner_headers, config):
    """The job runs the session's settings overridden by the turn's, so those are what is checked
    (a PUT over the budget was queued where a new session with the same fields got 400)."""
    model, _, created = _answered_image_session(client, user, runner_headers, config,
                                                width="256", height="256", steps="10")
    sid = created["id"]
    assert created["config"]["job_timeout"] == BUDGET.job_timeout(256, 256, 10, 1)

    over = {"input": "another", "width": "512", "height": "512", "steps": "150", "num_images": "4"}
    r = client.put(f"/api/v1/sessions/{sid}", headers=user.headers, data=over)
    assert r.status_code == 400 and "at most 60 s per request" in r.json["error"], r.json
    assert create(client, user, model_name=model, **over).status_code == 400  # as a new session is

    # Fits, but is more work than the first prompt: 512x512 at the session's 10 steps.
    r = client.put(f"/api/v1/sessions/{sid}", headers=user.headers,
                   data={"input": "another", "width": "512", "height": "512"})
    assert r.status_code == 200, r.json
    expected = BUDGET.job_timeout(512, 512, 10, 1)
    assert expected > r.json["config"]["job_timeout"]
    job = Job.fetch(job_id_for(r.json["interactions"][-1]["id"]), connection=Redis.from_url(config.redis_url),
                    serializer=JSONSerializer)
    assert job.timeout == expected
    assert (job.args[0]["width"], job.args[0]["steps"]) == (512, 10)


def test_without_an_announced_budget_the_documented_limits_hold(client, user, config):
    r = create(client, user, width="2048", height="2048", steps="150", num_images="4")
    assert r.status_code == 201, r.json  # no runner of this app announced one: the runner holds the job to its own
    assert "job_timeout" not in r.json["config"]
    job = Job.fetch(job_id_for(r.json["interactions"][-1]["id"]), connection=Redis.from_url(config.redis_url),
                    serializer=JSONSerializer)
    assert job.timeout == config.image_job_timeout


def test_refusals_say_what_fits():
    assert BUDGET.refusal("m", 512, 512, 20, 1) is None
    assert BUDGET.refusal("m", None, None, None, None) is None
    too_big = BUDGET.refusal("m", 1024, 1024, 1, 1)
    assert "at most 262144 pixels (for example 512x512)" in too_big and "1024x1024 is 1048576" in too_big
    over = BUDGET.refusal("m", 512, 512, 100, 4)
    # 0.262 MP x 4 x (100 x 2 + 4) = 214 s; one image at 100 steps is 53 s
    assert "about 214 s" in over and "at most 26 steps at this size" in over
    assert "1 image(s) at 100 steps" in over and "a smaller width and height" in over
    assert BUDGET.max_steps(512, 512, 1) == 112
