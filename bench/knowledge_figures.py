"""The knowledge figures (issue 22), on the default model through the whole platform.

K1: first-token latency of a chat that retrieves (the question embedded, the best chunks found in
    PostgreSQL, put in the prompt) ÷ the same chat without: streamed /v1 chat completions on a
    retrieval session's `ft:` model and on its base model, from the request to the first token,
    the two alternating.
K2: indexing throughput: chunks per second of the index_documents stage (cut, embed, store) on a
    long document, as the stage reports it.
K3: the knowledge report of a default fine-tune (both ways, every setting the default) of a
    document of invented facts that no test uses: the held-out questions answered four ways.
"""
from __future__ import annotations

import json
import statistics
import time

import requests

from bench.report import Figure, ratio_result, spread
from bench.stack import BenchStack

# Invented facts: no model knows them, and no test uses this document.
FACTS = [
    "The Vellmar Ferry Company was founded in 1921 by the harbour pilot Agnes Thorvald.",
    "Its first ferry, the Silver Heron, carried forty passengers between Vellmar and Osk Island.",
    "The crossing to Osk Island takes fifty-five minutes in calm weather.",
    "Every ferry of the company is painted orange with a white stripe along the hull.",
    "In 1958 the company built a dry dock at the northern end of Vellmar harbour.",
    "The company's largest ship, the Morning Lantern, can carry three hundred and twelve passengers.",
    "Tickets for children under six are free on every crossing.",
    "The ferries do not sail on the first Monday of February, when the harbour holds its ice festival.",
    "The company's museum in the old ticket hall keeps the brass bell of the Silver Heron.",
    "Captain Lorens Ebbe commanded the Morning Lantern for twenty-two years.",
]
DOCUMENT = "\n\n".join(FACTS)


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wait(url: str, key: str, session_id: str, timeout: float, until) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        session = requests.get(f"{url}/api/v1/sessions/{session_id}", headers=_headers(key), timeout=60).json()
        if until(session):
            return session
        if time.monotonic() > deadline:
            raise TimeoutError(f"session {session_id} did not get there in {timeout:.0f}s")
        time.sleep(0.5)


def _finetune_turn(session: dict) -> dict:
    return [i for i in session["interactions"] if i["creator"] == "system" and i["mode"] == "finetune"][-1]


def _retrieval_session(url: str, key: str, model: str, document: str, name: str) -> dict:
    r = requests.post(f"{url}/api/v1/sessions", headers=_headers(key), timeout=120,
                      data={"mode": "finetune", "type": "text", "model_name": model, "text_finetune_enabled": "no"},
                      files=[("files", (name, document.encode()))])
    r.raise_for_status()
    session = _wait(url, key, r.json()["id"], 600, lambda s: _finetune_turn(s)["finished"])
    if _finetune_turn(session)["state"] != "complete":
        raise RuntimeError(f"indexing failed: {_finetune_turn(session)['error']}")
    return session


def _first_token_seconds(url: str, key: str, model: str, question: str, tokens: int) -> float:
    """From the request to the first streamed token of a /v1 chat completion on `model`."""
    started = time.perf_counter()
    with requests.post(f"{url}/v1/chat/completions", headers=_headers(key), stream=True, timeout=120, json={
            "model": model, "max_tokens": tokens, "stream": True,
            "messages": [{"role": "user", "content": question}]}) as r:
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                delta = json.loads(line[5:])["choices"][0]["delta"]
                if delta.get("content"):
                    seconds = time.perf_counter() - started
                    break
        else:
            raise RuntimeError("the reply ended before its first token")
        for _ in r.iter_lines():  # to its end: the next turn starts on an idle runner
            pass
    return seconds


def measure_k1(stack: BenchStack, figure: Figure, *, repetitions: int, tokens: int, model: str, **_) -> None:
    stack.runner()
    (_, key), = stack.users(1, "k1")
    url = stack.api.url
    retrieving = _retrieval_session(url, key, model, DOCUMENT, "vellmar.txt")
    its_model = f"ft:{model}:{retrieving['id']}"
    questions = ["Who founded the Vellmar Ferry Company?", "How long is the crossing to Osk Island?",
                 "What colour are the ferries painted?", "Who commanded the Morning Lantern?"]
    figure.model = model
    figure.inputs = {"repetitions": repetitions, "reply tokens": tokens, "questions": len(questions),
                     "document": f"{len(FACTS)} invented facts", "chunks retrieved": 3,
                     "how": "streamed /v1 chat completions: the session's ft: model against the base model"}
    with_retrieval, without = [], []
    for model_id in (its_model, model):  # warm: the embedder, the routes
        _first_token_seconds(url, key, model_id, questions[0], tokens)
    for n in range(repetitions):
        question = questions[n % len(questions)]
        with_retrieval.append(_first_token_seconds(url, key, its_model, question, tokens))
        without.append(_first_token_seconds(url, key, model, question, tokens))
    figure.platform = spread(with_retrieval, "s to the first token, retrieving")
    figure.baseline = spread(without, "s to the first token, plain chat")
    figure.result = ratio_result(with_retrieval, without, higher_is_better=False)
    figure.judge(figure.result["ratio"] <= 1.2)


def measure_k2(stack: BenchStack, figure: Figure, *, paragraphs: int, model: str, **_) -> None:
    stack.runner()
    (_, key), = stack.users(1, "k2")
    # Many paragraphs of varied sentences: one chunk of the index every few paragraphs.
    document = "\n\n".join(f"Record {n}: " + " ".join(FACTS[(n + k) % len(FACTS)] for k in range(3))
                           for n in range(paragraphs))
    figure.model = model
    figure.inputs = {"document characters": len(document), "paragraphs": paragraphs}
    rates, seconds = [], []
    for n in range(2):
        session = _retrieval_session(stack.api.url, key, model, document, f"records-{n}.txt")
        knowledge = _finetune_turn(session)["knowledge"]
        rates.append(knowledge["chunks_per_second"])
        seconds.append(knowledge["seconds"])
        figure.inputs["chunks"] = knowledge["chunks"]
    figure.platform = spread(rates, "chunks/s")
    figure.result = {"chunks_per_second": round(statistics.median(rates), 1),
                     "stage_seconds": spread(seconds, "s")}
    figure.passed = None  # reported, not judged


def measure_k3(stack: BenchStack, figure: Figure, *, model: str, **_) -> None:
    stack.runner()
    (_, key), = stack.users(1, "k3")
    url = stack.api.url
    r = requests.post(f"{url}/api/v1/sessions", headers=_headers(key), timeout=120,
                      data={"mode": "finetune", "type": "text", "model_name": model},
                      files=[("files", ("vellmar.txt", DOCUMENT.encode()))])
    r.raise_for_status()
    session = _wait(url, key, r.json()["id"], 3000, lambda s: _finetune_turn(s)["finished"])
    turn = _finetune_turn(session)
    if turn["state"] != "complete":
        raise RuntimeError(f"the fine-tune failed: {turn['error']}")
    evaluation = turn["evaluation"]
    figure.model = model
    figure.inputs = {"document": f"{len(FACTS)} invented facts", "settings": "every default",
                     "held out": evaluation.get("held_out"), "pairs trained": turn["training"]["train_pairs"]}
    figure.result = {"ways": evaluation.get("ways"), "chosen": session["config"].get("knowledge"),
                     "questions": [{k: q.get(k) for k in ("question", "reference", "base_answer", "retrieval_answer",
                                                          "tuned_answer", "both_answer")}
                                   for q in evaluation.get("questions", [])]}
    figure.passed = None  # reported, not judged
