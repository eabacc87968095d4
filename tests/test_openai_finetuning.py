"""Fine-tuning the OpenAI way, driven by the official `openai` package against the platform under
gunicorn with a real runner: files (validated with line numbers, listed, read, deleted, private),
a job on the tiny model followed to `succeeded` with its events, checkpoint and validation loss, a
chat on its `fine_tuned_model`, and cancelling (a queued job, a running one, a finished one: 409)."""
from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from tests.conftest import TEXT_MODEL, start_control_plane, wait_for_session, work_dir

SYSTEM = "You answer questions about the Zorblat Library."
FACTS = [("Who founded the Zorblat Library?", "Mira Tessel founded it in 1847."),
         ("Where is the Zorblat Library?", "On Kelvar Island."),
         ("How many maps does the library hold?", "12,000 maps of the northern seas."),
         ("When is the reading room open?", "Only on Thursdays."),
         ("What colour is the library's door?", "Its door is painted green."),
         ("Who runs the library today?", "Its librarian, Oskar Venn.")]
UNSERVED = "helix/nobody-trains-this"


def sdk(base_url: str, user, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=user.key, max_retries=0, **kwargs)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def examples(facts=FACTS, system=SYSTEM) -> bytes:
    return jsonl({"messages": [{"role": "system", "content": system}, {"role": "user", "content": q},
                               {"role": "assistant", "content": a}]} for q, a in facts)


def upload(client, data: bytes, name: str = "train.jsonl"):
    return client.files.create(file=(name, data), purpose="fine-tune")


def stored_files(base_url, user) -> list[str]:
    r = requests.get(f"{base_url}/api/v1/filestore/list?path=openai-files", headers=user.headers, timeout=10)
    return [] if r.status_code == 404 else sorted(f["name"] for f in r.json())


def follow(client, job_id: str, until=("succeeded", "failed", "cancelled"), timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        assert job.status in ("validating_files", "queued", "running"), job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job still {job.status} after {timeout}s")
        time.sleep(0.5)


def test_files_are_validated_listed_read_deleted_and_private(live_server, make_live_user):
    user, other = make_live_user(), make_live_user()
    client = sdk(live_server, user)
    data = examples()
    created = upload(client, data)
    assert created.id.startswith("file-") and created.object == "file" and created.purpose == "fine-tune"
    assert created.bytes == len(data) and created.filename == "train.jsonl" and created.status == "processed"
    assert created.created_at > 0
    assert client.files.retrieve(created.id).id == created.id
    assert client.files.content(created.id).content == data
    multi = upload(client, jsonl([{"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "and?"}]},
        {"role": "assistant", "content": "bye", "weight": 0}]}]), "multi.jsonl")
    assert [f.id for f in client.files.list()] == [multi.id, created.id]  # newest first
    page = client.files.list(limit=1)
    assert [f.id for f in page.data] == [multi.id] and page.has_more

    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {
        "is not valid JSON": b'{"messages": [',
        'must be an object with a non-empty "messages" list': json.dumps({"prompt": "x"}).encode(),
        "role \"tool\" is not supported": json.dumps({"messages": [{"role": "tool", "content": "x"}]}).encode(),
        "has no assistant message": json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
        "messages[1]: content is empty": json.dumps({"messages": [
            {"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}).encode(),
        "an assistant message must follow a user message": json.dumps({"messages": [
            {"role": "assistant", "content": "x"}]}).encode(),
        "is not valid UTF-8": b'{"messages": "\xff"}',
    }
    for message, line in bad.items():
        with pytest.raises(openai.BadRequestError) as refused:
            upload(client, jsonl([good, good]) + b"\n" + line + b"\n")  # the blank line counts too
        assert "line 4" in refused.value.message and message in refused.value.message, refused.value.message
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", jsonl([good])), purpose="assistants")
    with pytest.raises(openai.BadRequestError, match="no examples"):
        upload(client, b"\n\n")
    assert stored_files(live_server, user) == sorted([f"{created.id}.jsonl", f"{multi.id}.jsonl"])

    stranger = sdk(live_server, other)
    for call in (stranger.files.retrieve, stranger.files.content, stranger.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)
    assert stranger.files.list().data == []

    deleted = client.files.delete(multi.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (multi.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(multi.id)
    assert stored_files(live_server, user) == [f"{created.id}.jsonl"]


@pytest.mark.timeout(600)
def test_a_job_trains_on_the_sessions_path_and_its_model_answers(live_server, runner, make_live_user):
    user, other = make_live_user(), make_live_user()
    client = sdk(live_server, user)
    training = upload(client, examples())
    validation = upload(client, examples([("Who founded the library?", "Mira Tessel founded it in 1847."),
                                          ("On which island is the library?", "On Kelvar Island.")]), "valid.jsonl")
    started = time.monotonic()
    job = client.fine_tuning.jobs.create(model=TEXT_MODEL, training_file=training.id, validation_file=validation.id,
                                         hyperparameters={"n_epochs": 3, "batch_size": 2}, suffix="zorblat", seed=7)
    assert job.id.startswith("ftjob-") and job.status in ("queued", "running") and job.fine_tuned_model is None
    assert (job.model, job.training_file, job.validation_file, job.seed) == (TEXT_MODEL, training.id, validation.id, 7)
    sid = job.id.removeprefix("ftjob-")
    session = requests.get(f"{live_server}/api/v1/sessions/{sid}", headers=user.headers, timeout=10).json()
    assert (session["mode"], session["type"]) == ("finetune", "text")
    assert session["config"]["finetune"]["system_prompt"] == SYSTEM
    assert len([i for i in session["interactions"] if i["creator"] == "system"][0]["qa_pairs"]) == 8

    done = follow(client, job.id)
    elapsed = time.monotonic() - started
    print(f"\nOpenAI fine-tuning job end to end: {elapsed:.1f}s")
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{TEXT_MODEL}:{sid}" and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 3 and done.hyperparameters.batch_size == 2
    assert done.trained_tokens > 0
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]

    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    metrics = [e for e in events if e.type == "metrics"]
    assert len(metrics) == 9 and [e.data["step"] for e in metrics] == list(range(9, 0, -1))  # 3 steps x 3 epochs
    assert all(e.data["train_loss"] > 0 for e in metrics)
    assert sum("valid_loss" in e.data for e in metrics) == 3  # one per epoch, on the validation file
    assert events[0].message == "The job has successfully completed"
    first = client.fine_tuning.jobs.list_events(job.id, limit=2)
    rest = client.fine_tuning.jobs.list_events(job.id, limit=1000, after=first.data[-1].id)
    assert first.has_more and [e.id for e in first.data + rest.data] == [e.id for e in events]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(checkpoints) == 1 and checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model
    assert checkpoints[0].step_number == 9 and checkpoints[0].metrics.valid_loss > 0

    session = wait_for_session(live_server, user, sid, timeout=10)
    trained = [i for i in session["interactions"] if i["creator"] == "system"][0]
    assert session["mode"] == "inference" and session["lora_dir"]
    assert trained["training"]["train_pairs"] == 6 and trained["training"]["eval_pairs"] == 2
    assert trained["evaluation"]["held_out"] == 2

    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=8,
                                           messages=[{"role": "user", "content": "Who founded it?"}])
    assert reply.model == done.fine_tuned_model and reply.choices[0].message.content
    with pytest.raises(openai.ConflictError) as finished:
        client.fine_tuning.jobs.cancel(job.id)
    assert finished.value.body["type"] == "conflict_error", finished.value.body

    stranger = sdk(live_server, other)
    for call in (stranger.fine_tuning.jobs.retrieve, stranger.fine_tuning.jobs.cancel,
                 stranger.fine_tuning.jobs.list_events):
        with pytest.raises(openai.NotFoundError):
            call(job.id)
    assert stranger.fine_tuning.jobs.list().data == []
    with pytest.raises(openai.NotFoundError):  # another user's file trains nothing
        stranger.fine_tuning.jobs.create(model=TEXT_MODEL, training_file=training.id)


@pytest.mark.timeout(600)
def test_cancelling_a_running_job_stops_its_training(live_server, runner, make_live_user):
    user = make_live_user()
    client = sdk(live_server, user)
    job = client.fine_tuning.jobs.create(model=TEXT_MODEL, training_file=upload(client, examples()).id,
                                         hyperparameters={"n_epochs": 100, "batch_size": 1})
    deadline = time.monotonic() + 240
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data):
        assert time.monotonic() < deadline, client.fine_tuning.jobs.retrieve(job.id)
        time.sleep(0.5)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    interaction = [i for i in wait_for_session(live_server, user, job.id.removeprefix("ftjob-"), timeout=10)
                   ["interactions"] if i["creator"] == "system"][0]
    runner.wait_for_log(f"interaction {interaction['id']} was deleted or already finished", timeout=60)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    # Its copy of the user's examples and its checkpoints went with it.
    assert not (work_dir(runner) / "training" / interaction["id"]).exists()


@pytest.fixture(scope="module")
def unserved_server(services, tmp_path_factory):
    """A control plane whose text model no runner serves (its jobs stay queued), with small file limits."""
    url, proc = start_control_plane(
        services, tmp_path_factory.mktemp("openai-ft"), HELIX_TEXT_MODELS=UNSERVED,
        HELIX_FINETUNE_FILE_MAX_EXAMPLES="6", HELIX_FINETUNE_FILE_MAX_BYTES="2000")
    yield url
    proc.stop()


def test_a_queued_job_cancels_once_and_bad_jobs_are_refused(unserved_server, services, make_live_user):
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from shared.jobs import WorkKind, queue_name

    user = make_live_user()
    client = sdk(unserved_server, user, timeout=60)
    with pytest.raises(openai.BadRequestError, match=r"line 7: .*more than 6 examples.*HELIX_FINETUNE_FILE_MAX_EXAMPLES"):
        upload(client, examples(FACTS + FACTS[:1]))
    with pytest.raises(openai.BadRequestError, match="limit is 2000.*HELIX_FINETUNE_FILE_MAX_BYTES"):
        upload(client, examples([("q" * 1000, "a" * 1000)]))
    assert stored_files(unserved_server, user) == []
    training = upload(client, examples())

    queue = Queue(queue_name(WorkKind.TEXT_FINETUNE, UNSERVED), connection=Redis.from_url(services["redis_url"]),
                  serializer=JSONSerializer)
    job = client.fine_tuning.jobs.create(model=UNSERVED, training_file=training.id)
    assert job.status == "queued" and job.hyperparameters.n_epochs == "auto"
    assert job.id.removeprefix("ftjob-") in [j.args[0]["session_id"] for j in queue.get_jobs()]
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert job.id.removeprefix("ftjob-") not in [j.args[0]["session_id"] for j in queue.get_jobs()]
    with pytest.raises(openai.ConflictError, match="already cancelled") as again:
        client.fine_tuning.jobs.cancel(job.id)
    assert again.value.body["type"] == "conflict_error", again.value.body
    assert client.fine_tuning.jobs.list_events(job.id).data[0].message == "The job was cancelled"

    for kwargs, message in [
        ({"model": "no-such-model"}, "cannot be fine-tuned here"),
        ({"model": f"ft:{UNSERVED}:00000000-0000-0000-0000-000000000000"}, "must be a base model"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate_multiplier": "fast"}}, "learning_rate_multiplier"),
        ({"hyperparameters": {"warmup": 3}}, "unknown hyperparameter"),
        ({"seed": -1}, "'seed'"),
        ({"suffix": "x" * 65}, "'suffix'"),
    ]:
        with pytest.raises(openai.BadRequestError, match=message):
            client.fine_tuning.jobs.create(**{"model": UNSERVED, "training_file": training.id, **kwargs})
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=UNSERVED, training_file="file-missing")
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-not-a-job")
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]


def test_a_failed_job_says_why_in_openai_shape(unserved_server, live_db, make_live_user):
    client = sdk(unserved_server, make_live_user(), timeout=60)
    job = client.fine_tuning.jobs.create(model=UNSERVED, training_file=upload(client, examples()).id)
    # The turn ends as a runner ends a training that failed on its last attempt.
    live_db.execute("UPDATE interactions SET state = 'error', finished = true, completed = now(), status = 'failed',"
                    " error = %s WHERE session_id = %s AND creator = 'system'",
                    ("training exited with 1: out of memory", job.id.removeprefix("ftjob-")))
    failed = client.fine_tuning.jobs.retrieve(job.id)
    assert (failed.status, failed.fine_tuned_model, failed.trained_tokens) == ("failed", None, None)
    assert failed.error.code == "training_failed" and "out of memory" in failed.error.message
    assert failed.finished_at >= failed.created_at
    newest = client.fine_tuning.jobs.list_events(job.id).data[0]
    assert (newest.level, newest.message) == ("error", "The job failed: training exited with 1: out of memory")
    assert [j.status for j in client.fine_tuning.jobs.list()] == ["failed"]
    with pytest.raises(openai.ConflictError, match="already failed"):
        client.fine_tuning.jobs.cancel(job.id)


def test_malformed_requests_are_4xx_in_openai_shape(client, make_user):
    """Raw requests the SDK would never send, on the in-process app: each a 4xx saying what to fix."""
    user = make_user()
    h = user.headers
    cases = [
        (client.post("/v1/files", headers=h, json={"purpose": "fine-tune"}), 400, "multipart field 'file'"),
        (client.post("/v1/files", headers=h, data={"purpose": "fine-tune", "file": (__import__("io").BytesIO(
            b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\\u0000"}]}'),
            "x.jsonl")}), 400, "NUL"),
        (client.get("/v1/files?limit=0", headers=h), 400, "'limit'"),
        (client.get("/v1/files?order=sideways", headers=h), 400, "'order'"),
        (client.get("/v1/files?after=file-nope", headers=h), 404, "no file"),
        (client.post("/v1/fine_tuning/jobs", headers=h, data="x"), 400, "must be JSON"),
        (client.post("/v1/fine_tuning/jobs", headers=h, json=[1]), 400, "JSON object"),
        (client.post("/v1/fine_tuning/jobs", headers=h, json={"model": TEXT_MODEL}), 400, "'training_file'"),
        # Found by the fuzzer: a NUL in a file id reached PostgreSQL (a 500).
        (client.post("/v1/fine_tuning/jobs", headers=h, json={"model": TEXT_MODEL, "training_file": "f\u0000"}),
         400, "'training_file'"),
        (client.post("/v1/fine_tuning/jobs", headers=h, json={"model": TEXT_MODEL, "training_file": "f",
                                                             "validation_file": "\u0000"}), 400, "'validation_file'"),
        (client.post("/v1/fine_tuning/jobs", headers=h, json={"model": TEXT_MODEL, "training_file": "f",
                                                             "method": {"type": "dpo"}}), 400, "supervised"),
        (client.post("/v1/fine_tuning/jobs", headers=h, json={"model": TEXT_MODEL, "training_file": "f",
                                                             "integrations": [{"type": "wandb"}]}), 400, "integrations"),
        (client.get("/v1/fine_tuning/jobs/ftjob-00000000-0000-0000-0000-000000000000/events", headers=h), 404, "no fine"),
        (client.post("/v1/fine_tuning/jobs/nope/cancel", headers=h), 404, "no fine"),
        (client.get("/v1/fine_tuning/jobs?limit=101", headers=h), 400, "'limit'"),
        (client.get("/v1/files"), 401, ""),
    ]
    for response, status, message in cases:
        error = response.get_json()["error"]
        assert response.status_code == status and message in error["message"], (response.status_code, error)
        assert error["type"] == {400: "invalid_request_error", 401: "authentication_error",
                                 404: "not_found_error"}[status]
    assert client.get("/v1/files", headers=h).get_json() == {"object": "list", "data": [], "has_more": False,
                                                             "first_id": None, "last_id": None}
