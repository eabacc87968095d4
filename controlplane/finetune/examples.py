"""Chat examples for fine-tuning, OpenAI's JSONL (one `{"messages": [...]}` per line): checked line
by line so that every error names the line to fix, and turned into the question/answer pairs the
trainer learns from.

Each assistant turn becomes one pair, answering the user message(s) since the previous assistant
turn (earlier turns are not part of its prompt); an assistant turn with `"weight": 0` is context
only, not learned. A leading system (or developer) message stays with each of its example's pairs.
"""
from __future__ import annotations

import codecs
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from controlplane.errors import BadRequest

ROLES = ("system", "developer", "user", "assistant")
_UNSUPPORTED_KEYS = ("tools", "functions", "parallel_tool_calls")
_UNSUPPORTED_MESSAGE_KEYS = ("tool_calls", "function_call", "audio")


@dataclass(frozen=True)
class Limits:
    max_bytes: int        # HELIX_FINETUNE_FILE_MAX_BYTES
    max_examples: int     # HELIX_FINETUNE_FILE_MAX_EXAMPLES
    max_chars: int        # one message's content (HELIX_MAX_INPUT_CHARS)
    max_pairs: int = 20_000


@dataclass(frozen=True)
class Pair:
    system: str           # "" when the example has no system message
    question: str
    answer: str


def _content(value: Any, where: str, limits: Limits) -> str:
    if isinstance(value, list):  # OpenAI's content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
            raise BadRequest(f"{where}: content parts must be text ({{\"type\": \"text\", \"text\": ...}})")
        value = "\n".join(p["text"] for p in value)
    if not isinstance(value, str):
        raise BadRequest(f"{where}: content must be a string")
    if not value.strip():
        raise BadRequest(f"{where}: content is empty")
    if "\x00" in value:
        raise BadRequest(f"{where}: content must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest(f"{where}: content is not valid Unicode text") from None
    if len(value) > limits.max_chars:
        raise BadRequest(f"{where}: content is {len(value)} characters; the limit is {limits.max_chars}"
                         " (HELIX_MAX_INPUT_CHARS)")
    return value.strip()


def _example(line: bytes, n: int, limits: Limits) -> list[Pair]:
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest(f"line {n} is not valid UTF-8") from None
    except RecursionError:
        raise BadRequest(f"line {n} nests too deeply") from None
    except ValueError as err:
        raise BadRequest(f"line {n} is not valid JSON: {err}") from None
    if not isinstance(value, dict) or not isinstance(value.get("messages"), list) or not value["messages"]:
        raise BadRequest(f'line {n} must be an object with a non-empty "messages" list')
    for key in _UNSUPPORTED_KEYS:
        if value.get(key):
            raise BadRequest(f"line {n}: '{key}' is not supported: examples are plain chat messages")
    system: list[str] = []
    asked: list[str] = []
    pairs: list[Pair] = []
    learned = False
    for m, message in enumerate(value["messages"]):
        where = f"line {n}, messages[{m}]"
        if not isinstance(message, dict):
            raise BadRequest(f'{where} must be an object with "role" and "content"')
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"{where}: role {json.dumps(role)[:40]} is not supported: use system, user or assistant")
        for key in _UNSUPPORTED_MESSAGE_KEYS:
            if message.get(key):
                raise BadRequest(f"{where}: '{key}' is not supported: examples are plain chat messages")
        text = _content(message.get("content"), where, limits)
        if role in ("system", "developer"):
            if asked or pairs:
                raise BadRequest(f"{where}: a system message must come before the user and assistant messages")
            system.append(text)
        elif role == "user":
            asked.append(text)
        else:
            weight = message.get("weight", 1)
            if weight not in (0, 1) or isinstance(weight, bool):
                raise BadRequest(f"{where}: weight must be 0 or 1")
            if not asked:
                raise BadRequest(f"{where}: an assistant message must follow a user message")
            if weight:
                pairs.append(Pair("\n".join(system), "\n\n".join(asked), text))
                learned = True
            asked = []
    if not learned:
        raise BadRequest(f"line {n} has no assistant message to learn from (with weight 1)")
    return pairs


def parse(data: bytes, limits: Limits) -> list[list[Pair]]:
    """Every example of a JSONL file, each as its pairs; blank lines are skipped. Raises a 400
    naming the first bad line."""
    if len(data) > limits.max_bytes:
        raise BadRequest(f"the file is {len(data)} bytes; the limit is {limits.max_bytes}"
                         " (HELIX_FINETUNE_FILE_MAX_BYTES)")
    examples: list[list[Pair]] = []
    pairs = 0
    # Editors on Windows start UTF-8 files with a byte-order mark; JSON's own decoder refuses it.
    data = data.removeprefix(codecs.BOM_UTF8)
    for n, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(examples) == limits.max_examples:
            raise BadRequest(f"line {n}: the file holds more than {limits.max_examples} examples, the limit"
                             " (HELIX_FINETUNE_FILE_MAX_EXAMPLES)")
        examples.append(_example(line, n, limits))
        pairs += len(examples[-1])
        if pairs > limits.max_pairs:
            raise BadRequest(f"line {n}: the file makes more than {limits.max_pairs} question/answer pairs")
    if not examples:
        raise BadRequest("the file holds no examples: send one JSON object with \"messages\" per line")
    return examples


def common_system(examples: list[list[Pair]]) -> str:
    """The system message most examples share (the first on a tie): the fine-tuned model's own,
    used when a caller sends none."""
    counts = Counter(p[0].system for p in examples if p)
    return counts.most_common(1)[0][0] if counts else ""
