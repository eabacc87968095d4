"""Writes candidate questions about one fact of a document, in one question style, with a text
model behind an OpenAI-compatible API (the runner's own vLLM server by default).

The answer of every pair is the fact itself, a sentence of the document, so answers are grounded
by construction and every fact is covered: the model only has to ask about it. Its reply is
constrained to a JSON schema by the serving engine, so it always parses; a reply cut off by the
token limit is retried once and then counts as an error for its chunk, never as zero questions.
"""
from __future__ import annotations

import json
import threading
import zlib

import requests
import requests.adapters

STYLE_INSTRUCTIONS = {
    "quiz": "simple quiz questions, as a teacher would ask them",
    "paraphrase": "questions that use different words from the sentence",
    "wh": "questions that start with who, what, when, where, why or how",
    "curious": "questions a curious reader would ask",
    "keyword": "short questions that name the sentence's key term",
}


EXAMPLE_FACT = "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."
EXAMPLE_QUESTIONS = {
    "quiz": ["When was the Eiffel Tower completed?", "For which event was the Eiffel Tower built?",
             "In which city is the Eiffel Tower?", "What year was the Eiffel Tower finished?"],
    "paraphrase": ["In what year did work on the Eiffel Tower end?", "Which fair was the Eiffel Tower made for?",
                   "Where does the Eiffel Tower stand?", "How old is the Eiffel Tower's completion date?"],
    "wh": ["When was the Eiffel Tower completed?", "Why was the Eiffel Tower built?",
           "Where is the Eiffel Tower?", "What was the Eiffel Tower built for?"],
    "curious": ["Was the Eiffel Tower built for a special event?", "How long ago was the Eiffel Tower finished?",
                "Which fair led to the Eiffel Tower being built?", "Is the Eiffel Tower in Paris?"],
    "keyword": ["Eiffel Tower: completed when?", "Eiffel Tower built for which fair?",
                "Eiffel Tower: in which city?", "Eiffel Tower: finished in which year?"],
}


class GenerationError(Exception):
    """The model could not write questions (server error, reply cut off twice)."""


def _schema(count: int) -> dict:
    question = {"type": "string", "minLength": 8, "maxLength": 160}
    return {"type": "object", "additionalProperties": False, "required": ["questions"],
            "properties": {"questions": {"type": "array", "items": question,
                                         "minItems": 1, "maxItems": count}}}


class QuestionWriter:
    def __init__(self, base_url: str, model: str, api_key: str = "", http: requests.Session | None = None,
                 temperature: float = 0.7):
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.model = model
        if http is None:  # one connection per request in flight
            http = requests.Session()
            http.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=64))
            http.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=64))
        self.http = http
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.temperature = temperature
        # The tokens every request took, retries included (requests run on several threads).
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self._usage_lock = threading.Lock()

    def _count(self, answer: dict) -> None:
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if isinstance(usage, dict):
            with self._usage_lock:
                for key in self.usage:
                    if isinstance(usage.get(key), int) and usage[key] > 0:
                        self.usage[key] += usage[key]

    def messages(self, fact: str, context: str, document: str, style: str, count: int) -> list[dict]:
        """A worked example first: a 135M model copies a shown pattern far better than it follows
        an instruction. The fact stands alone; its neighbours are there only to resolve 'it'."""
        ask = "Write {n} {style} about this sentence. Each question names what it asks about.\n"
        example = {"questions": EXAMPLE_QUESTIONS[style][:count]}
        return [
            {"role": "system", "content": "You write quiz questions about sentences of a document."},
            {"role": "user", "content": ask.format(n=count, style=STYLE_INSTRUCTIONS[style])
             + f"Sentence: {EXAMPLE_FACT}"},
            {"role": "assistant", "content": json.dumps(example)},
            {"role": "user", "content": ask.format(n=count, style=STYLE_INSTRUCTIONS[style])
             + (f"Context: {context}\n" if context and context != fact else "") + f"Sentence: {fact}"},
        ]

    def write(self, fact: str, context: str, document: str, style: str, count: int) -> list[str]:
        body = {"model": self.model, "messages": self.messages(fact, context, document, style, count),
                "temperature": self.temperature, "max_tokens": 64 * count + 32,
                # Sampled, yet the same for the same fact and style: a retried or repeated data
                # preparation writes the same questions.
                "seed": zlib.crc32(f"{style}\0{fact}".encode()),
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "questions", "schema": _schema(count)}}}
        for attempt in (1, 2):
            try:
                r = self.http.post(self.url, json=body, headers=self.headers, timeout=(10, 300))
                r.raise_for_status()
                answer = r.json()
                self._count(answer)
                choice = answer["choices"][0]
            except (requests.RequestException, ValueError, KeyError, IndexError) as err:
                if attempt == 2:
                    raise GenerationError(f"the question model failed: {err}") from None
                continue
            if choice.get("finish_reason") == "length":
                body["max_tokens"] *= 2
                continue
            try:
                questions = json.loads(choice["message"]["content"])["questions"]
            except (ValueError, KeyError, TypeError):
                continue  # an endpoint that ignored the schema: ask once more
            return [q.strip() for q in questions if isinstance(q, str) and q.strip()]
        raise GenerationError("the question model's reply was cut off or unreadable twice")
