"""Before and after: the held-out questions answered by the base model and by the fine-tuned one
(the same warm vLLM server, the adapter by name), each scored against the reference answer. With
the session's documents indexed, the knowledge report: the same questions answered four ways
(shared.knowledge.Way), retrieval's ways with each question's excerpts in the system prompt."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from runner.evaluation.metrics import score_answers
from runner.knowledge.retrieval import grounded
from shared.knowledge import Way


def answer(base_url: str, model: str, system_prompt: str, question: str, max_tokens: int = 96,
           http: requests.Session | None = None) -> str:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}]
    r = (http or requests).post(f"{base_url}/v1/chat/completions", timeout=(5, 300), json={
        "model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"] or ""


def evaluate(base_url: str, base_model: str, tuned_model: str, system_prompt: str,
             held_out: list[dict], excerpts: list[list[dict]] | None = None, concurrency: int = 16) -> dict:
    """Scores per question and in total (token F1, ROUGE-L, exact match): base against tuned and,
    given the chunks retrieval found for each question (`excerpts`), every way of
    shared.knowledge.Way under `ways`."""
    questions = [p["question"] for p in held_out]
    plain = [system_prompt] * len(questions)
    asked = {Way.BASE: (base_model, plain), Way.FINETUNE: (tuned_model, plain)}
    if excerpts is not None:
        with_chunks = [grounded(system_prompt, found) for found in excerpts]
        asked |= {Way.RETRIEVAL: (base_model, with_chunks), Way.BOTH: (tuned_model, with_chunks)}
    # Every way's answers at once: vLLM batches them (a few held-out questions, each way in turn,
    # was four short batches one after another).
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        answers = {way: [pool.submit(answer, base_url, model, prompt, question)
                         for question, prompt in zip(questions, prompts)]
                   for way, (model, prompts) in asked.items()}
        scored = {way: score_answers([{"question": p["question"], "reference": p["answer"], "prediction": a.result()}
                                      for p, a in zip(held_out, futures)])
                  for way, futures in answers.items()}
    before, after = scored[Way.BASE], scored[Way.FINETUNE]
    per_question = []
    for n, (b, a) in enumerate(zip(before["questions"], after["questions"])):
        row = {"question": b["question"], "reference": b["reference"],
               "base_answer": b["prediction"], "tuned_answer": a["prediction"],
               "base": {k: round(b[k], 4) for k in before["mean"]},
               "tuned": {k: round(a[k], 4) for k in after["mean"]}}
        for way in (Way.RETRIEVAL, Way.BOTH):
            if way in scored:
                answered = scored[way]["questions"][n]
                row[f"{way.value}_answer"] = answered["prediction"]
                row[way.value] = {k: round(answered[k], 4) for k in before["mean"]}
        per_question.append(row)
    result = {"held_out": len(held_out), "metrics": list(before["mean"]),
              "before": {k: round(v, 4) for k, v in before["mean"].items()},
              "after": {k: round(v, 4) for k, v in after["mean"].items()},
              "questions": per_question}
    if excerpts is not None:
        result["ways"] = {way.value: {k: round(v, 4) for k, v in scored[way]["mean"].items()} for way in Way}
    return result
