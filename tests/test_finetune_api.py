"""Creating a text fine-tune, and every way a request for one can be wrong: each is a 4xx that says
what to fix, and a refused request leaves no session and no file behind."""
from __future__ import annotations

import io

import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from shared.jobs import job_id_for, queue_name
from tests.conftest import hold_job, runner_auth


def _post(client, user, files=(), **fields):
    data = {"mode": "finetune", "type": "text", **fields}
    data["files"] = [(io.BytesIO(content), name) for name, content in files]
    return client.post("/api/v1/sessions", headers=user.headers, data=data, content_type="multipart/form-data")


def _nothing_stored(client, user, app):
    sessions = client.get("/api/v1/sessions", headers=user.headers).json
    assert sessions["total_count"] == 0, sessions
    listing = client.get("/api/v1/filestore/list", headers=user.headers)
    assert listing.status_code in (200, 404) and not (listing.json if listing.status_code == 200 else [])


def test_a_fine_tune_is_created_at_once_with_its_documents_stored_and_data_prep_queued(client, user, config):
    r = _post(client, user, files=[("notes.md", b"# Notes\n\nThe moon orbits the earth every 27 days."),
                                   ("page.html", b"<p>Hello</p>")],
              manually_review_questions="yes", epochs="3", question_styles="quiz,keyword",
              urls="https://example.org/a https://example.org/b")
    assert r.status_code == 201, r.json
    s = r.json
    assert s["mode"] == "finetune" and s["type"] == "text" and s["model_name"] == config.text_models[0]
    user_turn, system_turn = s["interactions"]
    assert [p.rsplit("/", 1)[1] for p in user_turn["files"]] == ["notes.md", "page.html"]
    assert user_turn["urls"] == ["https://example.org/a", "https://example.org/b"]
    assert system_turn["state"] == "waiting" and system_turn["data_prep_stage"] == "extract_text"
    assert system_turn["qa_pairs"] == []
    options = s["config"]["finetune"]
    assert options["manually_review_questions"] is True and options["hyperparameters"] == {"epochs": 3}
    assert options["question_styles"] == ["quiz", "keyword"]
    assert "notes.md" in options["system_prompt"]
    # The documents are the caller's files, readable like any other.
    got = client.get(f"/api/v1/filestore/viewer/{user_turn['files'][0]}", headers=user.headers)
    assert got.status_code == 200 and b"moon orbits" in got.data
    job = Job.fetch(job_id_for(system_turn["id"], "dataprep"), connection=Redis.from_url(config.redis_url),
                    serializer=JSONSerializer)
    assert job.origin == queue_name("text-dataprep", config.text_models[0])
    payload = job.args[0]
    assert payload["files"] == user_turn["files"] and payload["urls"] == user_turn["urls"]
    assert payload["question_styles"] == ["quiz", "keyword"]


@pytest.mark.parametrize("fields,files,message", [
    ({}, [], "needs documents"),
    ({}, [("tool.exe", b"MZ")], "tool.exe"),
    ({}, [("a.txt", b"x"), ("a.txt", b"y")], "share a name"),
    ({"epochs": "0"}, [("a.txt", b"x")], "'epochs' must be between"),
    ({"learning_rate": "fast"}, [("a.txt", b"x")], "'learning_rate' must be a number"),
    ({"lora_rank": "128"}, [("a.txt", b"x")], "'lora_rank' must be between 1 and 64"),
    ({"question_styles": "quiz,riddle"}, [("a.txt", b"x")], "riddle"),
    ({"manually_review_questions": "maybe"}, [("a.txt", b"x")], "yes or no"),
    ({"urls": "ftp://example.org/x"}, [], "not an http(s) URL"),
    ({"chunk_tokens": "10"}, [("a.txt", b"x")], "'chunk_tokens'"),
    ({"type": "image"}, [("a.png", b"x")], "'a.png' is not an image"),
    ({"model_name": "no-such-model"}, [("a.txt", b"x")], "unknown text model"),
])
def test_bad_fine_tune_requests_are_refused_and_store_nothing(client, user, app, fields, files, message):
    r = _post(client, user, files=files, **fields)
    assert r.status_code == 400, r.json
    assert message in r.json["error"], r.json
    _nothing_stored(client, user, app)


def test_oversize_and_malformed_bodies_are_4xx(client, user, config, app):
    big = b"x" * (config.max_upload_bytes + 1)
    r = _post(client, user, files=[("big.txt", big)])
    assert r.status_code == 413 and "larger" in r.json["error"]
    r = client.post("/api/v1/sessions", headers={**user.headers, "Content-Type": "multipart/form-data; boundary=zz"},
                    data=b"--zz\r\nContent-Disposition: form-data; name=\"mode\"\r\n\r\nfinetune\r\n--z")
    assert 400 <= r.status_code < 500 and "error" in r.json
    _nothing_stored(client, user, app)


def test_review_routes_refuse_what_does_not_fit_the_stage(client, user, make_user):
    s = _post(client, user, files=[("a.txt", b"Some text about things.")]).json
    sid, iid = s["id"], s["interactions"][1]["id"]
    base = f"/api/v1/sessions/{sid}/finetune"
    assert client.get(f"{base}/text/conversations/{iid}", headers=user.headers).json == []
    pairs = [{"question": "What is it?", "answer": "A thing."}]
    r = client.put(f"{base}/text/conversations/{iid}", headers=user.headers, json=pairs)
    assert r.status_code == 409 and "review" in r.json["error"]
    assert client.post(f"{base}/start", headers=user.headers).status_code == 409
    assert client.put(f"{base}/text/retry", headers=user.headers).status_code == 409
    # Continuing a session that is still being fine-tuned is a conflict, not a chat.
    r = client.put(f"/api/v1/sessions/{sid}", headers=user.headers, data={"input": "hi"})
    assert r.status_code == 409 and "fine-tuned" in r.json["error"]
    # Another user sees none of it.
    other = make_user()
    assert client.get(f"{base}/text/conversations/{iid}", headers=other.headers).status_code == 404
    assert client.post(f"{base}/start", headers=other.headers).status_code == 404
    assert client.get(f"/api/v1/sessions/{sid}/finetune/text/conversations/nope", headers=user.headers).status_code == 404


def test_reviewed_pairs_in_either_shape_and_paraphrases_share_their_fact(client, user, db):
    s = _post(client, user, files=[("a.txt", b"Some text about things.")]).json
    sid, iid = s["id"], s["interactions"][1]["id"]
    db.execute("UPDATE interactions SET state = 'editing', data_prep_stage = 'edit_questions' WHERE id = %s", (iid,))
    url = f"/api/v1/sessions/{sid}/finetune/text/conversations/{iid}"
    body = [{"question": "Who wrote it?", "answer": "Ada wrote it."},
            {"conversations": [{"from": "human", "value": "Which person wrote it?"},
                               {"from": "gpt", "value": "Ada  wrote it."}]},
            {"question": "When?", "answer": "In 1843."}]
    r = client.put(url, headers=user.headers, json=body)
    assert r.status_code == 200, r.json
    # Answered in Helix's ShareGPT shape; this platform's pair objects with ?format=pairs.
    assert r.json[1] == {"conversations": [{"from": "human", "value": "Which person wrote it?"},
                                           {"from": "gpt", "value": "Ada  wrote it."}]}
    assert client.get(url, headers=user.headers).json == r.json
    assert client.get(url + "?format=yaml", headers=user.headers).status_code == 400
    pairs = client.get(url + "?format=pairs", headers=user.headers).json
    assert [p["question"] for p in pairs] == ["Who wrote it?", "Which person wrote it?", "When?"]
    # The same answer makes two questions paraphrases of one fact (one of them can be held out).
    assert pairs[0]["fact"] == pairs[1]["fact"] != pairs[2]["fact"]
    for bad, message in [({"pairs": "x"}, "JSON list"), ([{"question": "q?"}], "'answer'"),
                         ([{"question": "q?", "answer": "a" * 5000}], "the limit is 4000"), ([], "at least one")]:
        r = client.put(url, headers=user.headers, json=bad)
        assert r.status_code == 400 and message in r.json["error"], (bad, r.json)
    assert len(client.get(url, headers=user.headers).json) == 3  # a refused edit changes nothing


def test_a_run_that_starts_again_replaces_the_history_past_its_start(client, user, api_runner_token):
    """A runner killed after its checkpoint at step 2 had reported steps 3 and 4; the run resumed at
    step 2 reports them again. The history keeps each step once; a run from step 0 starts it anew."""
    headers = runner_auth(api_runner_token, "history-tests")
    assert client.post("/api/v1/runner/register", headers=headers,
                       json={"runner_id": "history-tests", "models": {}}).status_code == 200
    s = _post(client, user, files=[("a.txt", b"Mira founded the Zorblat Library.")]).json
    sid, iid = s["id"], s["interactions"][-1]["id"]
    hold_job(client.application.config["HELIX"].redis_url, iid, "history-tests", stage="dataprep",
             kind="text-dataprep")
    metrics = f"/api/v1/runner/sessions/{sid}/interactions/{iid}/finetune/metrics"

    def report(**body) -> list[int]:
        r = client.post(metrics, headers=headers, json=body)
        assert r.status_code == 200, r.json
        history = client.get(f"/api/v1/sessions/{sid}", headers=user.headers).json["interactions"][-1]
        return [p["step"] for p in history["training_history"]]

    def points(*steps: int) -> list[dict]:
        return [{"step": n, "loss": 1 / n} for n in steps]

    assert report(points=[], from_step=0) == []
    assert report(points=[{"step": 0, "val_loss": 2.0}, *points(1, 2)]) == [0, 1, 2]
    assert report(points=points(3, 4)) == [0, 1, 2, 3, 4]
    assert report(points=[], from_step=2) == [0, 1, 2]  # resumed at its checkpoint
    assert report(points=points(3, 4, 5)) == [0, 1, 2, 3, 4, 5]
    assert report(points=[], from_step=0) == []  # run again from the start
    for bad in (-1, 1.5, "2", True):
        r = client.post(metrics, headers=headers, json={"points": [], "from_step": bad})
        assert r.status_code == 400 and "from_step" in r.json["error"], (bad, r.json)
