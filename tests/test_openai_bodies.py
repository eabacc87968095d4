"""The OpenAI doors' bodies are read by declared models (controlplane/openai/input.py): every
malformed parameter is a 400 in OpenAI's error shape naming it as OpenAI's documentation spells it
(`messages[0].content`), before anything is queued; what the SDKs send besides is let through."""
from __future__ import annotations

import pytest

from controlplane.openai.input import ChatRequest, chat_request, completion_request, image_request

USER_TURN = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body, named", [
    ({"messages": USER_TURN}, "'model' is required"),
    ({"model": "  ", "messages": USER_TURN}, "'model' is required"),
    ({"model": "m"}, "'messages': Field required"),
    ({"model": "m", "messages": []}, "'messages': List should have at least 1 item"),
    ({"model": "m", "messages": [{"role": "bot", "content": "x"}]}, "'messages[0].role'"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "'messages[0].content'"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "'messages[0].content[0].type'"),
    ({"model": "m", "messages": [{"role": "assistant", "content": "x"}]}, "the last message must be the user's"),
    ({"model": "m", "messages": USER_TURN, "temperature": 5}, "'temperature': Input should be less than or equal to 2"),
    ({"model": "m", "messages": USER_TURN, "temperature": True}, "'temperature'"),
    ({"model": "m", "messages": USER_TURN, "top_p": "0.5"}, "'top_p'"),
    ({"model": "m", "messages": USER_TURN, "n": 9}, "'n'"),
    ({"model": "m", "messages": USER_TURN, "seed": 1.5}, "'seed'"),
    ({"model": "m", "messages": USER_TURN, "max_tokens": 0}, "'max_tokens'"),
    ({"model": "m", "messages": USER_TURN, "max_completion_tokens": 10**9},
     "'max_completion_tokens' must be a whole number from 1 to"),
    ({"model": "m", "messages": USER_TURN, "stop": [""]}, "'stop"),
    ({"model": "m", "messages": USER_TURN, "stop": ""}, "'stop"),
    ({"model": "m", "messages": USER_TURN, "stop": ["a", "b", "c", "d", "e"]}, "'stop"),
    ({"model": "m", "messages": USER_TURN, "stream": "yes"}, "'stream'"),
    ({"model": "m", "messages": USER_TURN, "stream": True, "n": 2}, "'n' above 1"),
    ({"model": "m", "messages": USER_TURN, "stream_options": []}, "'stream_options'"),
    ({"model": "m", "messages": USER_TURN, "response_format": {"type": "xml"}}, "'response_format.type'"),
    ({"model": "m", "messages": USER_TURN, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "'response_format.json_schema.schema'"),
    ({"model": "m", "messages": USER_TURN, "response_format": {"type": "json_schema", "json_schema": {
        "schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}}},
     "is not a valid JSON Schema: 'strng' is not valid under any of the given schemas (at $.properties.a.type)"),
    ({"model": "m", "messages": USER_TURN, "tools": [{"type": "function"}]}, "'tools' is not supported"),
    ({"model": "m", "messages": USER_TURN, "logprobs": True}, "'logprobs' is not supported"),
    ([USER_TURN], "the body must be a JSON object"),
])
def test_a_bad_chat_body_is_a_400_naming_the_parameter(client, user, body, named):
    r = client.post("/v1/chat/completions", headers=user.headers, json=body)
    assert r.status_code == 400, r.json
    error = r.json["error"]
    assert error["type"] == "invalid_request_error" and named in error["message"], error


@pytest.mark.parametrize("path, body, named", [
    ("/v1/completions", {"model": "m"}, "'prompt': Field required"),
    ("/v1/completions", {"model": "m", "prompt": ["one", "two"]}, "'prompt'"),
    ("/v1/completions", {"model": "m", "prompt": ""}, "'prompt' must be a non-empty string"),
    ("/v1/completions", {"model": "m", "prompt": "x", "echo": True}, "'echo', 'best_of' and 'suffix'"),
    ("/v1/images/generations", {"prompt": 7}, "'prompt'"),
    ("/v1/images/generations", {"prompt": "a cat", "n": 5}, "'n'"),
    ("/v1/images/generations", {"prompt": "a cat", "size": "big"}, "'size' must be WIDTHxHEIGHT"),
    ("/v1/images/generations", {"prompt": "a cat", "size": "500x512"}, "'size' width must be a multiple of 8"),
    ("/v1/images/generations", {"prompt": "a cat", "response_format": "png"}, "'response_format'"),
    ("/v1/images/generations", {"prompt": "a cat", "seed": -1}, "'seed'"),
])
def test_bad_completion_and_image_bodies_are_400s_naming_the_parameter(client, user, path, body, named):
    r = client.post(path, headers=user.headers, json=body)
    assert r.status_code == 400 and named in r.json["error"]["message"], r.json


def test_a_full_chat_body_becomes_the_sessions_turns_and_settings():
    body = {"model": " acme/m ", "user": "someone", "metadata": {"k": "v"},  # unread, as OpenAI's SDKs send them
            "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "one"},
                         {"role": "user", "content": [{"type": "text", "text": "two"}]},
                         {"role": "assistant", "content": "ok"}, {"role": "user", "content": "three"}],
            "max_completion_tokens": 64, "max_tokens": 9, "temperature": 0, "top_p": 0.5, "seed": 7, "stop": "END",
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}, "strict": True}},
            "stream": True, "stream_options": {"include_usage": True}}
    assert chat_request(body, max_chars=1000, max_reply=100) == ChatRequest(
        model="acme/m", turns=[("user", "one\n\ntwo"), ("assistant", "ok"), ("user", "three")], system="Be brief.",
        text={"max_tokens": 64, "temperature": 0, "sampling": {
            "top_p": 0.5, "seed": 7, "stop": ["END"], "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": True}}}},
        stream=True, include_usage=True)


def test_completion_and_image_bodies_become_their_requests():
    call = completion_request({"model": "m", "prompt": ["Once upon"], "best_of": 1}, max_chars=100)
    assert call.turns == [("user", "Once upon")] and call.text == {"completion": True}
    image = image_request({"prompt": "a cat", "size": "512x256", "n": 2, "seed": 3, "response_format": "b64_json"}, 100)
    assert (image.model, image.image, image.response_format) == (
        "", {"num_images": 2, "width": 512, "height": 256, "seed": 3}, "b64_json")
