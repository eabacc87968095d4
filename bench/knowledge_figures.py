"""The knowledge figures (issue 22), on the default model through the whole platform.

K1: first-token latency of a chat turn in a session that retrieves (the question embedded, the
    best chunks found in PostgreSQL, put in the prompt) ÷ the same turn in a plain chat session:
    from the PUT that sends the turn to the first streamed token on the session's events stream,
    the two sessions alternating.
K2: indexing throughput: chunks per second of the index_documents stage (cut, embed, store) on a
    long document, as the stage reports it.
K3: the knowledge report of a default fine-tune (both ways, every setting the default) of a
    document of invented facts that no test uses: the held-out questions answered four ways.
"""
from __future__ import annotations

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


def _first_token_seconds(url: str, key: str, session_id: str, question: str, tokens: int) -> float:
    """From the PUT of a turn to its first streamed token (the events stream opened before)."""
    with requests.get(f"{url}/api/v1/sessions/{session_id}/events", headers=_headers(key), stream=True,
                      timeout=120) as events:
        lines = events.iter_lines(decode_unicode=True)
        started = time.perf_counter()
        r = requests.put(f"{url}/api/v1/sessions/{session_id}", headers=_headers(key), timeout=60,
                         data={"input": question, "max_tokens": str(tokens)})
        r.raise_for_status()
        for line in lines:
            if line == "event: delta":
                seconds = time.perf_counter() - started
                break
        else:
            raise RuntimeError("the events stream ended before the first token")
    _wait(url, key, session_id, 120, lambda s: s["interactions"][-1]["finished"])
    return seconds


def measure_k1(stack: BenchStack, figure: Figure, *, repetitions: int, tokens: int, model: str, **_) -> None:
    stack.runner()
    (_, key), = stack.users(1, "k1")
    url = stack.api.url
    retrieving = _retrieval_session(url, key, model, DOCUMENT, "vellmar.txt")
    r = requests.post(f"{url}/api/v1/sessions", headers=_headers(key), timeout=60,
                      data={"mode": "inference", "type": "text", "model_name": model, "input": "Hello.",
                            "max_tokens": "4"})
    r.raise_for_status()
    plain = _wait(url, key, r.json()["id"], 120, lambda s: s["interactions"][-1]["finished"])
    questions = ["Who founded the Vellmar Ferry Company?", "How long is the crossing to Osk Island?",
                 "What colour are the ferries painted?", "Who commanded the Morning Lantern?"]
    figure.model = model
    figure.inputs = {"repetitions": repetitions, "reply tokens": tokens, "questions": len(questions),
                     "document": f"{len(FACTS)} invented facts", "chunks retrieved": 3}
    with_retrieval, without = [], []
    _first_token_seconds(url, key, retrieving["id"], questions[0], tokens)  # warm: the embedder loads
    for n in range(repetitions):
        question = questions[n % len(questions)]
        with_retrieval.append(_first_token_seconds(url, key, retrieving["id"], question, tokens))
        without.append(_first_token_seconds(url, key, plain["id"], question, tokens))
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
