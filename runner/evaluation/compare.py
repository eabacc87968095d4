"""Before and after: the held-out questions answered by the base model and by the fine-tuned one
(the same warm vLLM server, the adapter by name), each scored against the reference answer."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

from runner.evaluation.metrics import score_answers


def answer(base_url: str, model: str, system_prompt: str, question: str, max_tokens: int = 96,
           http: requests.Session | None = None) -> str:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}]
    r = (http or requests).post(f"{base_url}/v1/chat/completions", timeout=(5, 300), json={
        "model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"] or ""


def evaluate(base_url: str, base_model: str, tuned_model: str, system_prompt: str,
             held_out: list[dict], concurrency: int = 16) -> dict:
    """Scores per question and in total (token F1, ROUGE-L, exact match), base against tuned."""
    questions = [p["question"] for p in held_out]
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        base = list(pool.map(lambda q: answer(base_url, base_model, system_prompt, q), questions))
        tuned = list(pool.map(lambda q: answer(base_url, tuned_model, system_prompt, q), questions))
    before = score_answers([{"question": p["question"], "reference": p["answer"], "prediction": a}
                            for p, a in zip(held_out, base)])
    after = score_answers([{"question": p["question"], "reference": p["answer"], "prediction": a}
                           for p, a in zip(held_out, tuned)])
    per_question = [{"question": b["question"], "reference": b["reference"],
                     "base_answer": b["prediction"], "tuned_answer": a["prediction"],
                     "base": {k: round(b[k], 4) for k in before["mean"]},
                     "tuned": {k: round(a[k], 4) for k in after["mean"]}}
                    for b, a in zip(before["questions"], after["questions"])]
    return {"held_out": len(held_out), "metrics": list(before["mean"]),
            "before": {k: round(v, 4) for k, v in before["mean"].items()},
            "after": {k: round(v, 4) for k, v in after["mean"].items()},
            "questions": per_question}
