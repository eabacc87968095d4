"""Cut a document's text into overlapping chunks sized in the model's own tokens.

Each chunk becomes the context of the question-generation prompt, so its size has to be counted
the way the model counts (characters, as Helix did, over- or under-fill the context depending on
the language). Chunks end at a paragraph, else a sentence, else a word boundary, so no chunk
starts or ends mid-word and facts stay whole; consecutive chunks share about `overlap_tokens`
of whole sentences (or, when the last sentence is longer than that, its last words), so a fact
near a cut is seen with its context in one of them.

`split_into_sentences` is also how later stages find the facts (sentences) of a chunk.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

# Words that end with a period but rarely end a sentence ("Dr. Smith", "Fig. 3", "vs. them").
# Dotted single letters ("e.g.", "i.e.", "U.S.", "a.m.") and initials ("J. K. Rowling") are
# recognised by shape instead of being listed.
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr mt ft vs cf al fig figs eq eqs no nos vol vols ch sec
    approx dept est inc ltd co corp gen col lt sgt capt rev hon jan feb mar apr jun jul aug sep
    sept oct nov dec""".split())

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
# A candidate end: terminal punctuation, optional closing quotes or brackets, then whitespace.
_CANDIDATE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+")
_CJK_END = re.compile(r"(?<=[。！？])\s*")
_DOTTED_LETTERS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")
_WORD_WINDOW = 100  # characters read around a candidate end: more than any abbreviation or run of quotes


def split_into_sentences(text: str) -> list[str]:
    """The sentences of `text`, whitespace inside each collapsed to single spaces.

    A blank line always ends a sentence. Otherwise a sentence ends at ".", "!", "?" or "…"
    (plus closing quotes or brackets) followed by whitespace and then (after any opening quote or
    bracket) a letter that is not lower case, or a digit, unless the word before a lone "." is a listed abbreviation,
    dotted letters ("e.g.", "U.S.") or an initial ("J."). "3.5" never splits (no whitespace after
    the point). CJK "。！？" always end a sentence. A sentence that really ends with an
    abbreviation before a capital ("... in the U.S. Then") stays joined to the next one.
    """
    sentences = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        start = 0
        for match in _CANDIDATE_END.finditer(paragraph):
            if _ends_sentence(paragraph, match):
                sentences.append(paragraph[start:match.end()])
                start = match.end()
        sentences.append(paragraph[start:])
    pieces = (piece for sentence in sentences for piece in _CJK_END.split(sentence))
    return [" ".join(piece.split()) for piece in pieces if piece.strip()]


def _ends_sentence(text: str, match: re.Match) -> bool:
    following = text[match.end():match.end() + _WORD_WINDOW].lstrip("\"'“‘([")
    if not following or following[0].islower() or not following[0].isalnum():
        return False
    if match.group(0).rstrip().rstrip("\"'”’)]") != ".":
        return True  # "!", "?", "…" or "..." end a sentence
    # Only the word before the point matters: read a short window, not the whole paragraph (a
    # copy of the paragraph per candidate end made a long one cost quadratic time: minutes for
    # a million characters).
    before = text[max(0, match.start() - _WORD_WINDOW):match.start()].split()
    word = before[-1].lstrip("\"'“‘([") if before else ""
    return not (word.lower() in ABBREVIATIONS or _DOTTED_LETTERS.fullmatch(word))


@dataclass(frozen=True)
class _Unit:
    """A piece that is never cut: a sentence, or a word of a sentence too long for one chunk."""
    text: str
    sep: str     # what joins it to the piece before it: "\n\n" at a new paragraph, else " "
    tokens: int  # count_tokens(text), used to guess how many pieces fit before counting exactly


def _join(units: list[_Unit]) -> str:
    return "".join((unit.sep if i else "") + unit.text for i, unit in enumerate(units))


def _keep_going() -> None:
    return None


def split_into_chunks(text: str, count_tokens: Callable[[str], int], *, chunk_tokens: int = 512,
                      overlap_tokens: int = 64, check_stop: Callable[[], None] = _keep_going) -> list[str]:
    """Chunks of at most `chunk_tokens` tokens as `count_tokens` counts them (a single word that
    is longer stands alone), overlapping by up to `overlap_tokens`. Paragraphs are joined by
    "\n\n", everything else by single spaces. Deterministic: the same input gives the same
    chunks. Every chunk is counted whole, so a tokenizer that merges across pieces or spends
    tokens on separators never pushes a chunk over the limit. `check_stop` is called between
    paragraphs and chunks: it raises once the job must stop (a long document takes seconds)."""
    if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive integer, not {chunk_tokens!r}")
    if not isinstance(overlap_tokens, int) or not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(f"overlap_tokens must be an integer from 0 to chunk_tokens - 1 "
                         f"({chunk_tokens - 1}), not {overlap_tokens!r}")
    units = _units(text, count_tokens, chunk_tokens, check_stop)

    def fits(candidate: list[_Unit]) -> bool:
        return count_tokens(_join(candidate)) <= chunk_tokens

    chunks: list[str] = []
    start, carry = 0, []
    while start < len(units):
        check_stop()
        while carry and not fits(carry + [units[start]]):
            carry = carry[1:]  # the overlap gives way so the chunk can move on
        end = _last_fitting_end(units, carry, start, chunk_tokens, fits)
        chunk = carry + units[start:end]
        chunks.append(_join(chunk))
        carry = _overlap(chunk, count_tokens, overlap_tokens) if end < len(units) else []
        start = end
    return chunks


def _units(text: str, count_tokens: Callable[[str], int], chunk_tokens: int,
           check_stop: Callable[[], None]) -> list[_Unit]:
    units = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        for i, sentence in enumerate(split_into_sentences(paragraph)):
            check_stop()  # counting tokens sentence by sentence is where a long document's time goes
            sep = "\n\n" if i == 0 else " "
            tokens = count_tokens(sentence)
            if tokens <= chunk_tokens:
                units.append(_Unit(sentence, sep, tokens))
            else:
                units.extend(_Unit(word, sep if j == 0 else " ", count_tokens(word))
                             for j, word in enumerate(sentence.split(" ")))
    return units


def _last_fitting_end(units: list[_Unit], carry: list[_Unit], start: int, chunk_tokens: int,
                      fits: Callable[[list[_Unit]], bool]) -> int:
    """The largest `end` with carry + units[start:end] within the limit (at least start + 1):
    a guess from the pieces' own counts, then galloping and bisection on exact counts."""
    budget = chunk_tokens - sum(u.tokens for u in carry) - units[start].tokens
    guess = start + 1
    while guess < len(units) and units[guess].tokens <= budget:
        budget -= units[guess].tokens
        guess += 1
    lo, hi = start + 1, None  # lo is taken; hi, once known, does not fit
    if guess > lo:
        if fits(carry + units[start:guess]):
            lo = guess
        else:
            hi = guess
    step = 1
    while hi is None and lo < len(units):
        probe = min(lo + step, len(units))
        if fits(carry + units[start:probe]):
            lo, step = probe, step * 2
        else:
            hi = probe
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(carry + units[start:mid]):
            lo = mid
        else:
            hi = mid
    return lo


def _overlap(chunk: list[_Unit], count_tokens: Callable[[str], int], overlap_tokens: int) -> list[_Unit]:
    """The chunk's last whole sentences within `overlap_tokens`; if even the last sentence is
    longer, its last words within it."""
    if overlap_tokens == 0:
        return []
    taken: list[_Unit] = []
    for unit in reversed(chunk):
        if count_tokens(_join([unit] + taken)) > overlap_tokens:
            break
        taken.insert(0, unit)
    if taken:
        return taken
    words: list[_Unit] = []
    for word in reversed(chunk[-1].text.split(" ")):
        candidate = [_Unit(word, " ", 0)] + words
        if count_tokens(_join(candidate)) > overlap_tokens:
            break
        words = candidate
    return [_Unit(w.text, w.sep, count_tokens(w.text)) for w in words]
