"""Trimming a long chat to the model's context, on the tiny model's real vLLM server: the same
messages as before, at a cost that no longer grows with the length of the history."""
from __future__ import annotations

import json
import random
import time

import pytest
import requests

from runner.text import generation as text_generation
from runner.text.generation import fit_history
from runner.text.vllm_server import VllmServer
from tests.conftest import TEXT_MODEL

CONTEXT = 4096  # the tiny model's own limit


@pytest.fixture(scope="module")
def vllm(models_dir, tmp_path_factory):
    server = VllmServer(str(models_dir / "tiny-chat"), TEXT_MODEL, max_model_len=CONTEXT,
                        log_dir=tmp_path_factory.mktemp("vllm")).start()
    try:
        server.wait_ready()
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def cold_cache():
    """Each test starts as a worker process that has counted nothing yet."""
    text_generation._token_counts.clear()


class CountingSession(requests.Session):
    """A real HTTP session that counts its /tokenize calls and the characters they send."""

    def __init__(self):
        super().__init__()
        self.calls = self.chars = 0

    def request(self, method, url, *args, **kwargs):
        if url.endswith("/tokenize"):
            self.calls += 1
            self.chars += len(json.dumps(kwargs.get("json")))
        return super().request(method, url, *args, **kwargs)


def old_fit_history(base_url, model, messages, reply_tokens, session):
    """The algorithm before: the whole prompt counted again after every dropped exchange."""
    keep = 1 if messages and messages[0]["role"] == "system" else 0
    while len(messages) - keep > 1:
        info = session.post(f"{base_url}/tokenize", json={"model": model, "messages": messages}).json()
        if info["count"] + min(reply_tokens, info["max_model_len"] // 2) <= info["max_model_len"]:
            break
        messages = messages[:keep] + messages[keep + 2:]
    return messages


def text(rng: random.Random, chars: int) -> str:
    words = ["the", "model", "answers", "questions", "about", "river", "boats", "and", "their", "cargo",
             "in", "winter", "when", "ice", "blocks", "harbours", "north", "of", "town", "slowly"]
    out = []
    while sum(len(w) + 1 for w in out) < chars:
        out.append(rng.choice(words))
    return " ".join(out)


def chat(turns: int, user_chars: int, reply_chars: int, system: bool = False, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    messages = [{"role": "system", "content": "You answer briefly. " + text(rng, 200)}] if system else []
    for n in range(turns):
        messages.append({"role": "user", "content": f"question {n}: " + text(rng, user_chars)})
        if n < turns - 1:
            messages.append({"role": "assistant", "content": f"answer {n}: " + text(rng, reply_chars)})
    return messages


@pytest.mark.parametrize("messages, reply_tokens", [
    (chat(3, 200, 100), 512),                       # fits whole
    (chat(40, 300, 200), 512),                      # keeps its newest exchanges
    (chat(40, 300, 200, system=True), 512),         # the system message stays
    (chat(40, 300, 200, seed=1), 100_000),          # room for the reply is at most half the context
    (chat(12, 300, 200) + [{"role": "assistant", "content": "x"},  # the newest alone is too long:
                            {"role": "user", "content": text(random.Random(2), 20_000)}], 512),  # kept, vLLM says so
], ids=["fits", "long", "system", "half-context", "newest-too-long"])
def test_keeps_what_the_old_algorithm_kept(vllm, messages, reply_tokens):
    with requests.Session() as http:
        expected = old_fit_history(vllm, TEXT_MODEL, messages, reply_tokens, http)
        got = fit_history(vllm, TEXT_MODEL, messages, reply_tokens, session=http)
    assert got == expected, (len(messages), len(got), len(expected))
    assert got[-1] == messages[-1] and (messages[0]["role"] != "system" or got[0] == messages[0])


def one_turn(fit, base_url, messages) -> tuple[int, int, float]:
    """(tokenize calls, characters sent to them, seconds) of trimming one turn's history."""
    with CountingSession() as http:
        started = time.monotonic()
        fit(base_url, TEXT_MODEL, messages, 512, session=http)
        return http.calls, http.chars, time.monotonic() - started


def test_a_turn_costs_the_same_however_long_the_chat(vllm):
    """The issue's chat: continuations of ~4,300 characters. Before, turn N counted the whole
    history once per dropped exchange (per-turn latency went from 0.2 s to 8.8 s over 85 turns)."""
    costs = {}
    for turns in (5, 60):
        messages = chat(turns, 4300, 600, seed=turns)
        fit_history(vllm, TEXT_MODEL, messages[:-2], 512)  # this worker answered the turn before
        costs[turns] = one_turn(fit_history, vllm, messages)
        text_generation._token_counts.clear()  # a worker that never saw this chat
        costs[turns, "cold"] = one_turn(fit_history, vllm, messages)
        costs[turns, "old"] = one_turn(old_fit_history, vllm, messages)
    print(costs)
    # The reply before and the new question are counted, then the prompt once.
    assert costs[5][0] == costs[60][0] == 3
    assert costs[60][1] < 1.5 * costs[5][1]
    # A worker new to the chat counts only the newest messages that can fit.
    assert costs[60, "cold"][0] == costs[5, "cold"][0] and costs[60, "cold"][1] < 1.5 * costs[5, "cold"][1]
    # The old algorithm's calls and characters grew with the history.
    assert costs[60, "old"][0] > 10 * costs[60][0] and costs[60, "old"][1] > 100 * costs[60][1]
