"""Filter, balance and split the question/answer pairs a small model writes about a document.

Each candidate pairs a question with one *fact* (a sentence of a chunk); the answer is the fact
itself, so answers are grounded by construction and only the questions can be bad. Measured on
SmolLM2-135M (see DESIGN.md, "Fine-tuning"), many are: lists of question words, questions about
something the fact never mentions, the fact with a question mark, repeats, and questions whose
words point at a different sentence. Trained on those, the model answers every question with one
sentence. So we drop them, cap each fact's share so no fact crowds out the others, and report
what was dropped and which facts ended up with no question at all.

Standard library only: this runs inside the runner's data-prep job and in tests without models.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Hashable, Optional

QUESTION_WORDS = frozenset("who whom whose what when where why how which".split())

# Words that say nothing about what a sentence is about. Question words are in it so that "Who
# founded X?" and "X was founded by Y." are compared on X and "founded" alone.
STOPWORDS = QUESTION_WORDS | frozenset(
    """
    a about above after again against all also am an and any are as at be been before being
    below between both but by can could did do does doing done down during each else ever few
    for from further had has have having he her here hers herself him himself his i if in into
    is it its itself just let like made make many may me might more most much must my myself
    no nor not now of off on once one only or other our ours ourselves out over own per same
    shall she should so some such than that the their theirs them themselves then there these
    they this those through thus to too under until up upon us very was we were what whatever
    while will with within without would yet you your yours yourself yourselves
    called kind name named sort type way use used using
    """.split()
)

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)*")
_WORD = re.compile(r"\w+")


def _normal_word(token: str) -> str | None:
    """Fold possessives and plurals so "island's"/"islands"/"island" match; drop contractions."""
    if token.endswith("'s"):
        token = token[:-2]
    if "'" in token:  # don't, it'll, we've: function words
        return None
    if len(token) > 4 and token.endswith("s") and not token.endswith("ss"):
        token = token[:-1]
    return token


@lru_cache(maxsize=4096)
def _content_words(text: str) -> frozenset[str]:
    words = set()
    for token in _TOKEN.findall(text.lower().replace("\u2019", "'")):
        word = _normal_word(token)
        if word and word not in STOPWORDS and (len(word) >= 3 or any(c.isdigit() for c in word)):
            words.add(word)
    return frozenset(words)


def content_words(text: str) -> set[str]:
    """Lowercased, lightly normalised words of ``text`` that carry meaning (no stopwords)."""
    return set(_content_words(text))


def normalize_question(text: str) -> str:
    """The form two questions must share to count as duplicates: lowercase, no punctuation."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@dataclass
class Candidate:
    """A question written about fact ``fact_index`` of its chunk; ``answer`` is that fact."""

    question: str
    answer: str
    fact_index: int
    style: str


# --- filters ------------------------------------------------------------------------------------
# Each takes (candidate, the chunk's facts, normalised questions already accepted) and returns why
# the candidate is rejected, or None. They run in FILTERS order and the first reason wins, so the
# cheap, certain checks come first and each count in the report means one kind of fault.


def not_a_question(c: Candidate, facts: list[str], seen: set[str]) -> str | None:
    """A training question must look like one a user would ask."""
    text = c.question.strip()
    if not text.endswith("?"):
        return "does not end with '?'"
    n = len(text.split())
    if n < 3 or n > 40:
        return f"{n} words (needs 3 to 40)"
    return None


_WH = "|".join(sorted(QUESTION_WORDS))
_WH_LIST = re.compile(rf"\b(?:{_WH})\s*[,/]\s*(?:{_WH})\b", re.IGNORECASE)
_REPEAT = re.compile(r"\b(\w+)\b(?:\W+\1\b){2,}", re.IGNORECASE)
_PLACEHOLDERS = ("[", "<", "{", "___", "question:", "answer:")


def junk(c: Candidate, facts: list[str], seen: set[str]) -> str | None:
    """Text a small model emits when it echoes the prompt or loops instead of asking."""
    text = c.question.strip()
    lowered = text.lower()
    distinct_wh = {w for w in _WORD.findall(lowered) if w in QUESTION_WORDS}
    if _WH_LIST.search(text) or len(distinct_wh) >= 4:
        return "lists question words"
    for mark in _PLACEHOLDERS:
        if mark in lowered:
            return f"contains placeholder {mark!r}"
    repeat = _REPEAT.search(text)
    if repeat:
        return f"repeats {repeat.group(1)!r}"
    visible = [ch for ch in text if not ch.isspace()]
    if sum(ch.isalpha() for ch in visible) * 2 < len(visible):
        return "mostly non-letters"
    return None


def copies_answer(c: Candidate, facts: list[str], seen: set[str]) -> str | None:
    """The fact with a question mark teaches the model to echo, not to answer a paraphrase."""
    fact = facts[c.fact_index]
    fact_words = _content_words(fact)
    if not fact_words:
        return None
    share = len(fact_words & _content_words(c.question)) / len(fact_words)
    if share >= 0.9 and len(_WORD.findall(c.question)) >= 0.8 * len(_WORD.findall(fact)):
        return f"repeats {share:.0%} of its fact"
    return None


def off_topic(c: Candidate, facts: list[str], seen: set[str]) -> str | None:
    """A question must name what its answer is about ("Which island do you live on?" does not)."""
    if not _content_words(c.question) & _content_words(facts[c.fact_index]):
        return "shares no content word with its fact"
    return None


def round_trip(c: Candidate, facts: list[str], seen: set[str]) -> str | None:
    """The question's words must lead back to its own fact, not to a sibling sentence.

    Scores are content-word overlaps with every fact of the chunk; a tie keeps the question's own
    fact, so only a question that clearly points elsewhere is dropped.
    """
    words = _content_words(c.question)
    own = len(words & _content_words(facts[c.fact_index]))
    best_index, best = c.fact_index, own
    for i, fact in enumerate(facts):
        score = len(words & _content_words(fact))
        if score > best:
            best_index, best = i, score
    if best_index != c.fact_index:
        return f"retrieves fact {best_index} instead of fact {c.fact_index}"
    return None


def duplicate(c: Candidate, facts: list[str], seen: set[str]) -> str | None:
    """A repeated question adds weight to one phrasing, not a new phrasing."""
    if normalize_question(c.question) in seen:
        return "same as an accepted question"
    return None


Filter = Callable[[Candidate, list, set], Optional[str]]
FILTERS: tuple[Filter, ...] = (not_a_question, junk, copies_answer, off_topic, round_trip, duplicate)
FILTER_NAMES: tuple[str, ...] = tuple(f.__name__ for f in FILTERS)


def filter_candidates(
    candidates: list[Candidate], facts: list[str], seen: set[str] | None = None
) -> tuple[list[Candidate], dict[str, int]]:
    """Keep the candidates that pass every filter, and count the rest by the first filter failed.

    ``facts`` are the sentences of the chunk the candidates were written from. Pass one ``seen``
    set for every chunk of a document set: accepted questions are added to it, so a question
    repeated in another chunk is counted as a duplicate there.
    """
    seen = set() if seen is None else seen
    removed = dict.fromkeys(FILTER_NAMES, 0)
    accepted = []
    for c in candidates:
        if not 0 <= c.fact_index < len(facts):
            raise ValueError(f"fact_index {c.fact_index} outside the chunk's {len(facts)} facts")
        for check in FILTERS:
            if check(c, facts, seen) is not None:
                removed[check.__name__] += 1
                break
        else:
            accepted.append(c)
            seen.add(normalize_question(c.question))
    return accepted, removed


def balance(
    accepted: list[Candidate], facts: list[str], per_fact: int
) -> tuple[list[Candidate], dict]:
    """Cap each fact at ``per_fact`` questions, taking styles in turn so each fact keeps variety.

    Returns the kept candidates (by fact, then in round-robin order) and coverage stats:
    ``{"facts_total", "facts_covered", "facts_uncovered": [indices], "questions_per_fact":
    {"min", "max"} (over all facts, so an uncovered fact makes min 0), "over_cap"}``.
    """
    if per_fact < 1:
        raise ValueError("per_fact must be at least 1")
    by_fact: dict[int, dict[str, list[Candidate]]] = defaultdict(dict)
    for c in accepted:
        by_fact[c.fact_index].setdefault(c.style, []).append(c)
    kept: list[Candidate] = []
    counts = [0] * len(facts)
    for index in sorted(by_fact):
        queues = [list(q) for q in by_fact[index].values()]  # styles in first-seen order
        taken = 0
        while taken < per_fact and any(queues):
            for queue in queues:
                if queue and taken < per_fact:
                    kept.append(queue.pop(0))
                    taken += 1
        if 0 <= index < len(counts):
            counts[index] = taken
    stats = {
        "facts_total": len(facts),
        "facts_covered": sum(1 for n in counts if n),
        "facts_uncovered": [i for i, n in enumerate(counts) if not n],
        "questions_per_fact": {"min": min(counts, default=0), "max": max(counts, default=0)},
        "over_cap": len(accepted) - len(kept),
    }
    return kept, stats


def hold_out(pairs: list[dict], share: float, seed: int | str) -> tuple[list[dict], list[dict]]:
    """Split pairs into (train, eval) so that eval measures recall of facts from new phrasings.

    ``pairs`` are dicts with ``question``, ``answer`` and ``fact_key`` (any hashable naming the
    fact across the document set, e.g. ``(document, chunk, fact_index)``). For every fact with at
    least two questions, ``round(share * n)`` of them (at least one when ``share > 0``, never all)
    go to eval; facts with one question stay in train. Holding out per fact rather than per
    document means every eval question is an unseen paraphrase of a fact the model did train on,
    which is what a fine-tune on documents is meant to teach; a fact never trained on would only
    measure guessing. The choice per fact depends on ``seed`` and that fact's key alone, so it is
    reproducible and does not change when other facts are added. Both lists keep input order.
    """
    if not 0 <= share <= 1:
        raise ValueError("share must be between 0 and 1")
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        groups[pair["fact_key"]].append(i)
    held: set[int] = set()
    for key, indices in groups.items():
        if len(indices) < 2 or share == 0:
            continue
        n = min(len(indices) - 1, max(1, round(share * len(indices))))
        rng = random.Random(f"{seed}|{key!r}")
        held.update(rng.sample(indices, n))
    train = [p for i, p in enumerate(pairs) if i not in held]
    evaluation = [p for i, p in enumerate(pairs) if i in held]
    return train, evaluation
