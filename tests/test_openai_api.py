"""The OpenAI-compatible API driven by the official `openai` package, against the platform under
gunicorn with a real runner: chat, streams (to their `[DONE]` line), sampling settings, JSON
output (on the real model), models (fine-tuned ones included), plain completions, images, Helix's
sessions/chat (blocking and streamed), and each error class the SDK raises."""
from __future__ import annotations

import base64
import io
import json
import time
import uuid

import httpx
import openai
import pytest
import requests
from PIL import Image
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from shared.jobs import WorkKind, queue_name
from tests.conftest import (IMAGE_MODEL, REAL_TEXT_MODEL, TEXT_MODEL, app_with, start_control_plane,
                            wait_for_session, wait_until)
from tests.test_finetune_flow import _create, _pairs, _system, _until_review


def sdk(base_url: str, user, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=user.key, **kwargs)


def session_of(base_url, user, response) -> dict:
    sid = response.session_id  # an extra field of ours: the call is a session of the caller's
    r = requests.get(f"{base_url}/api/v1/sessions/{sid}", headers=user.headers, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_completion_is_a_session_of_the_caller(live_server, runner, live_user):
    client = sdk(live_server, live_user)
    response = client.chat.completions.create(
        model=TEXT_MODEL, max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"},
                  {"role": "assistant", "content": "hi"}, {"role": "user", "content": "and now?"}])
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == TEXT_MODEL
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 0 < response.usage.completion_tokens <= 12 and response.usage.prompt_tokens > 0
    session = session_of(live_server, live_user, response)
    assert [i["message"] for i in session["interactions"]] == ["hello", "hi", "and now?", choice.message.content]
    assert session["config"]["text"]["system_prompt"] == "You are terse."


def test_stream_with_usage_and_sampling(live_server, runner, live_user):
    client = sdk(live_server, live_user)
    chunks = list(client.chat.completions.create(
        model=TEXT_MODEL, messages=[{"role": "user", "content": "tell me a story"}], max_tokens=40,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert {c.session_id for c in chunks} == {chunks[0].session_id}, "every chunk names the call's session"
    final = wait_for_session(live_server, live_user, chunks[0].session_id)
    assert final["interactions"][-1]["id"] == chunks[0].id.removeprefix("chatcmpl-")
    assert final["interactions"][-1]["message"] == text

    same = [client.chat.completions.create(model=TEXT_MODEL, messages=[{"role": "user", "content": "x"}],
                                           max_tokens=16, temperature=1.0, seed=7).choices[0].message.content
            for _ in range(2)]
    assert same[0] == same[1], "the same seed gave different replies"
    several = client.chat.completions.create(model=TEXT_MODEL, messages=[{"role": "user", "content": "x"}],
                                             max_tokens=8, temperature=1.0, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2] and all(c.message.content for c in several.choices)


def test_top_p_stop_and_max_completion_tokens(live_server, runner, live_user):
    """On the tiny model (random weights, so only the engine's settings shape the reply): a tiny
    top_p leaves the most likely token only, so sampling gives one reply whatever the seed; a stop
    string cuts that reply just before it; max_completion_tokens caps the count."""
    client = sdk(live_server, live_user)
    ask = {"model": TEXT_MODEL, "messages": [{"role": "user", "content": "What is the weather like?"}],
           "max_tokens": 16}
    greedy = client.chat.completions.create(**ask, temperature=0).choices[0]
    assert greedy.finish_reason == "length" and greedy.message.content
    narrow = {"temperature": 1.0, "top_p": 1e-6}
    sampled = [client.chat.completions.create(**ask, temperature=1.0, seed=seed, **extra).choices[0].message.content
               for seed in (1, 2) for extra in ({}, {"top_p": 1e-6})]
    # (Not compared with the greedy reply: the random weights' bf16 logits can tie, and argmax and
    # top-p's sort may break a tie differently, as they did on a fresh build of the tiny model.)
    assert sampled[1] == sampled[3], "top_p did not narrow sampling to one token whatever the seed"
    assert sampled[0] != sampled[2], "sampling without top_p gave the same reply for two seeds"
    assert sampled[1] not in (sampled[0], sampled[2]), "sampling without top_p gave top_p's reply"

    # The stop string is cut from a reply that is the same every time (greedy, or narrowed by
    # top_p), whichever of the two shows visible text with these weights (one build of the tiny
    # model answered greedily with newlines only).
    text, settings = next((t, k) for t, k in ((greedy.message.content, {"temperature": 0}), (sampled[1], narrow))
                          if t.strip())
    stop = next(text[i:i + n] for n in (3, 2, 1) for i in range(1, len(text) - n + 1)  # first seen past the start
                if text[i:i + n].strip() and text.index(text[i:i + n]) == i)
    cut = client.chat.completions.create(**ask, **settings, seed=3, stop=[stop, "never appears"]).choices[0]
    assert stop not in cut.message.content and text.startswith(cut.message.content), (stop, cut.message.content)
    assert len(cut.message.content) < len(text) and cut.finish_reason == "stop"

    capped = client.chat.completions.create(**ask, temperature=0, max_completion_tokens=3)
    assert capped.usage.completion_tokens == 3 and capped.choices[0].finish_reason == "length"


def test_raw_streams_end_with_done_and_name_their_session(live_server, runner, live_user):
    """The literal `data: [DONE]` line ends a stream (the SDK would also stop at the end of the
    body, so the raw lines are read), on /v1/chat/completions and on Helix's sessions/chat."""
    client = sdk(live_server, live_user)
    with client.chat.completions.with_streaming_response.create(
            model=TEXT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line and not line.startswith(":")]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert chunks and {c["session_id"] for c in chunks} == {chunks[0]["session_id"]}

    r = requests.post(f"{live_server}/api/v1/sessions/chat", headers=live_user.headers, stream=True, timeout=60,
                      json={"stream": True, "messages": [{"role": "user", "content": {
                          "content_type": "text", "parts": ["where is Paris?"]}}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.iter_lines(decode_unicode=True) if line and not line.startswith(":")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks) and chunks[-1]["choices"][0]["finish_reason"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    session = wait_for_session(live_server, live_user, chunks[0]["session_id"])
    assert text and session["interactions"][-1]["message"] == text and session["interactions"][-1]["finished"]


def test_plain_completion_and_models(live_server, runner, live_user):
    client = sdk(live_server, live_user)
    done = client.completions.create(model=TEXT_MODEL, prompt="Once upon a time", max_tokens=8)
    assert done.object == "text_completion" and done.choices[0].text
    assert session_of(live_server, live_user, done)["config"]["text"]["completion"] is True
    ids = [m.id for m in client.models.list()]
    assert TEXT_MODEL in ids and IMAGE_MODEL in ids
    assert client.models.retrieve(TEXT_MODEL).id == TEXT_MODEL


def test_json_schema_output_is_constrained_by_the_engine(live_server, real_runner, live_user):
    client = sdk(live_server, live_user)
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    response = client.chat.completions.create(
        model=REAL_TEXT_MODEL, max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": "Name a big city and its population, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    value = json.loads(response.choices[0].message.content)
    assert set(value) == {"city", "population"} and isinstance(value["population"], int), value


def test_json_object_output_parses(live_server, real_runner, live_user):
    """json_object holds the reply to JSON's grammar but not its length: the tiny model's random
    tokens fill any string to max_tokens, so the real model shows the object closing."""
    response = sdk(live_server, live_user).chat.completions.create(
        model=REAL_TEXT_MODEL, max_tokens=60, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Reply with the JSON object {"answer": "yes"} and nothing else.'}])
    choice = response.choices[0]
    assert isinstance(json.loads(choice.message.content), dict) and choice.finish_reason == "stop", choice


def test_images_as_b64_json_and_url(live_server, runner, live_user):
    client = sdk(live_server, live_user)
    result = client.images.generate(model=IMAGE_MODEL, prompt="a red square", n=2, size="64x64",
                                    response_format="b64_json")
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    by_url = client.images.generate(model=IMAGE_MODEL, prompt="a blue square", size="64x64")
    r = requests.get(by_url.data[0].url, headers=live_user.headers, timeout=10)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 64)


def test_helix_sessions_chat_creates_and_continues(live_server, runner, live_user):
    url = f"{live_server}/api/v1/sessions/chat"

    def message(text):
        return {"role": "user", "content": {"content_type": "text", "parts": [text]}}

    r = requests.post(url, headers=live_user.headers, timeout=60,
                      json={"system": "Be brief.", "messages": [message("where is Paris?")]})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["object"] == "chat.completion" and first["choices"][0]["message"]["content"]
    r = requests.post(url, headers=live_user.headers, timeout=60,
                      json={"session_id": first["session_id"], "messages": [message("and Rome?")]})
    assert r.status_code == 200, r.text
    session = requests.get(f"{live_server}/api/v1/sessions/{first['session_id']}", headers=live_user.headers).json()
    assert [i["message"] for i in session["interactions"] if i["creator"] == "user"] == ["where is Paris?", "and Rome?"]

    # An image session is not continued here (its reply would be a picture, not text): it says where.
    image = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers, timeout=60, data={
        "mode": "inference", "type": "image", "model_name": IMAGE_MODEL, "input": "a lighthouse"}).json()
    wait_for_session(live_server, live_user, image["id"])
    r = requests.post(url, headers=live_user.headers, timeout=60,
                      json={"session_id": image["id"], "messages": [message("and a boat?")]})
    assert r.status_code == 400 and f"PUT /api/v1/sessions/{image['id']}" in r.json()["error"], r.text
    assert len(wait_for_session(live_server, live_user, image["id"])["interactions"]) == 2  # nothing added


def test_error_classes(live_server, runner, live_user):
    client = sdk(live_server, live_user, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk(live_server, type("U", (), {"key": "hk-wrong"})(), max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert "does not exist" in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=TEXT_MODEL, messages=[{"role": "user", "content": "x"}], temperature=5)
    assert "temperature" in bad.value.message and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TEXT_MODEL, messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=f"ft:{TEXT_MODEL}:00000000-0000-0000-0000-000000000000",
                                       messages=[{"role": "user", "content": "x"}])


@pytest.fixture(scope="module")
def one_stream_server(services, tmp_path_factory):
    """A control plane allowing each user one open call, for a model no runner serves."""
    url, proc = start_control_plane(
        services, tmp_path_factory.mktemp("openai-limits"), HELIX_TEXT_MODELS="helix/nobody-serves-this",
        HELIX_MAX_EVENT_STREAMS_PER_USER="1")
    yield url
    proc.stop()


def test_rate_limit_and_conflict(one_stream_server, services, make_live_user):
    """A call past the caller's stream slots is refused before anything is stored or queued."""
    user, unserved = make_live_user(), "helix/nobody-serves-this"
    client = sdk(one_stream_server, user, max_retries=0)
    queue = Queue(queue_name(WorkKind.TEXT_INFERENCE, unserved), connection=Redis.from_url(services["redis_url"]),
                  serializer=JSONSerializer)

    def stored() -> tuple[int, int]:
        listed = requests.get(f"{one_stream_server}/api/v1/sessions", headers=user.headers, timeout=10).json()
        return listed["total_count"], queue.count

    with pytest.raises(openai.NotFoundError):  # a call refused after taking its slot gives it back
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    waiting = client.chat.completions.create(model=unserved, stream=True, messages=[{"role": "user", "content": "x"}])
    first = next(iter(waiting))  # the call is open, its reply queued
    before = stored()
    assert before[0] == 1 and before[1] >= 1
    ask = {"model": unserved, "messages": [{"role": "user", "content": "y"}]}
    for refused in (
            lambda: client.chat.completions.create(**ask),
            lambda: client.chat.completions.create(**ask, stream=True),
            lambda: client.completions.create(model=unserved, prompt="y"),
            lambda: client.images.generate(prompt="y", size="64x64")):
        with pytest.raises(openai.RateLimitError) as limited:
            refused()
        assert limited.value.body["type"] == "rate_limit_error", limited.value.body
    with pytest.raises(openai.RateLimitError):  # Helix's route: a 429 in Helix's own error shape
        client.post(f"{one_stream_server}/api/v1/sessions/chat", cast_to=object, body={
            "model": unserved, "messages": [{"role": "user", "content": {"content_type": "text", "parts": ["y"]}}]})
    assert stored() == before, "a refused call stored a session or queued a job"
    waiting.close()  # the server frees its slot at its next write, within about two seconds

    deadline = time.monotonic() + 10
    while True:
        try:  # its reply is still queued: no second turn yet
            client.post(f"{one_stream_server}/api/v1/sessions/chat", cast_to=object, body={
                "session_id": first.session_id,
                "messages": [{"role": "user", "content": {"content_type": "text", "parts": ["z"]}}]})
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the closed stream's slot was never freed"
            time.sleep(0.2)
        except openai.ConflictError as conflict:
            assert "still being generated" in str(conflict.body), conflict.body
            break
        else:
            raise AssertionError("a second turn was taken while the first reply was queued")
    assert stored() == before


@pytest.mark.timeout(600)
def test_a_fine_tuned_session_is_a_model_to_call(live_server, runner, make_live_user):
    live_user, other = make_live_user(), make_live_user()
    s = _create(live_server, live_user, [("zorblat.txt", b"The Zorblat Library was founded in 1847.")], epochs="2",
                rag_enabled="no")  # the adapter alone (tests/test_knowledge_flow.py: a model that retrieves)
    system = _system(_until_review(live_server, live_user, s["id"]))
    base = f"{live_server}/api/v1/sessions/{s['id']}/finetune"
    assert requests.put(f"{base}/text/conversations/{system['id']}", headers=live_user.headers,
                        json=_pairs()).status_code == 200
    assert requests.post(f"{base}/start", headers=live_user.headers).status_code == 200
    wait_for_session(live_server, live_user, s["id"], timeout=300, until=lambda x: _system(x)["finished"])

    client = sdk(live_server, live_user)
    model = f"ft:{TEXT_MODEL}:{s['id']}"
    assert model in [m.id for m in client.models.list()]
    response = client.chat.completions.create(model=model, max_tokens=8,
                                              messages=[{"role": "user", "content": "Who founded it?"}])
    assert response.model == model and response.choices[0].message.content
    reply = session_of(live_server, live_user, response)["interactions"][-1]
    assert reply["metadata"]["adapter"].startswith("lora-"), reply["metadata"]
    stranger = sdk(live_server, other, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])


def test_a_reply_not_final_in_time_is_a_504_that_names_its_session_and_is_not_retried(config, make_user, tmp_path_factory):
    """HELIX_OPENAI_REPLY_SECONDS bounds the wait. The SDK, which retries a 5xx twice by default,
    is told not to (each retry would queue the same work again); the one session goes on."""
    model = f"helix/unserved-{uuid.uuid4().hex[:8]}"
    app = app_with(config, tmp_path_factory, text_models=[model], openai_reply_seconds=1)
    user = make_user()
    client = openai.OpenAI(base_url="http://in-process/v1", api_key=user.key,
                           http_client=httpx.Client(transport=httpx.WSGITransport(app=app)))
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as late:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
    assert late.value.status_code == 504 and time.monotonic() - started < 10
    listed = app.test_client().get("/api/v1/sessions", headers=user.headers).get_json()
    assert listed["total_count"] == 1, "the SDK asked again"
    session_id = listed["sessions"][0]["id"]
    assert f"poll GET /api/v1/sessions/{session_id}" in late.value.body["message"], late.value.body
    session = app.test_client().get(f"/api/v1/sessions/{session_id}", headers=user.headers).get_json()
    assert session["interactions"][-1]["state"] == "waiting"  # still queued for a runner


def test_a_call_whose_reply_is_cancelled_or_deleted_meanwhile_is_a_409_at_once(config, make_user, tmp_path_factory):
    """The caller (through another request) cancelled the reply or deleted its session while the
    call waited: a conflict the SDK does not retry, answered as it happens, not a server error at
    the wait's end."""
    from concurrent.futures import ThreadPoolExecutor

    model = f"helix/unserved-{uuid.uuid4().hex[:8]}"  # queued for a runner that never comes
    app = app_with(config, tmp_path_factory, text_models=[model], openai_reply_seconds=120)
    user = make_user()
    client = openai.OpenAI(base_url="http://in-process/v1", api_key=user.key, max_retries=0,
                           http_client=httpx.Client(transport=httpx.WSGITransport(app=app)))
    pages = app.test_client()

    seen: set[str] = set()

    def waiting_session() -> str:
        listed = pages.get("/api/v1/sessions", headers=user.headers).get_json()
        return next((s["id"] for s in listed["sessions"] if s["id"] not in seen), "")

    for stop in ("cancel", "delete"):
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.chat.completions.create, model=model,
                               messages=[{"role": "user", "content": "hello"}])
            session_id = wait_until(waiting_session, 30, "the call's session")
            seen.add(session_id)
            time.sleep(0.5)  # the call is waiting on the session's events
            started = time.monotonic()
            r = (pages.post(f"/api/v1/sessions/{session_id}/cancel", headers=user.headers) if stop == "cancel"
                 else pages.delete(f"/api/v1/sessions/{session_id}", headers=user.headers))
            assert r.status_code == 200, r.get_data(as_text=True)
            with pytest.raises(openai.ConflictError) as stopped:
                call.result(timeout=30)
        assert time.monotonic() - started < 5, stop  # as it happened, not at a keep-alive's read
        assert stopped.value.response.headers["x-should-retry"] == "false"
        message = stopped.value.body["message"]
        assert ("cancelled" in message) if stop == "cancel" else (f"session {session_id} was deleted" in message)
