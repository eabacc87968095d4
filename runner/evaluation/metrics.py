"""Score model answers against reference answers: exact match, token F1 and ROUGE-L.

A fine-tune is evaluated by answering held-out questions with the base model and with the
adapter and comparing both to the reference answers (DESIGN.md, "Fine-tuning"). These are the
standard lexical scores so numbers can be read against published ones: normalisation and token F1
follow the SQuAD evaluation script, ROUGE-L is the F-measure (beta = 1) of the longest common
subsequence. They reward wording, not meaning; an LLM judge complements them when one is
configured. Standard library only.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (as SQuAD)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def _f_measure(overlap: int, predicted: int, expected: int) -> float:
    if not predicted and not expected:
        return 1.0  # nothing to say and nothing said: agreement
    if not overlap:
        return 0.0
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both normalise to the same text, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of precision and recall of the normalised tokens (a bag: order ignored)."""
    pred, ref = _tokens(prediction), _tokens(reference)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    return _f_measure(overlap, len(pred), len(ref))


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """F-measure (beta = 1) of the longest common subsequence: like F1, but order counts."""
    pred, ref = _tokens(prediction), _tokens(reference)
    return _f_measure(_lcs_length(pred, ref), len(pred), len(ref))


_METRICS = {"token_f1": token_f1, "rouge_l": rouge_l, "exact_match": exact_match}


def score_answers(rows: list[dict]) -> dict:
    """Score rows of ``{"question", "reference", "prediction"}``.

    Returns ``{"questions": [row + {"token_f1", "rouge_l", "exact_match"}, ...],
    "mean": {"token_f1", "rouge_l", "exact_match"}}``; means of no rows are 0.0.
    """
    scored = []
    for row in rows:
        prediction, reference = row.get("prediction") or "", row.get("reference") or ""
        scores = {name: metric(prediction, reference) for name, metric in _METRICS.items()}
        scored.append({"question": row.get("question", ""), "reference": reference,
                       "prediction": prediction, **scores})
    mean = {name: (sum(r[name] for r in scored) / len(scored) if scored else 0.0)
            for name in _METRICS}
    return {"questions": scored, "mean": mean}
