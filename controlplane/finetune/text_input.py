"""What a fine-tune request may say, checked before anything is stored: its settings, URLs,
document names, and a reviewer's question/answer pairs. Each problem is a 400 that says what to fix."""
from __future__ import annotations

import re
import zipfile
from pathlib import PurePosixPath
from typing import Any, Mapping

from controlplane.errors import BadRequest
from controlplane.http.fields import hyperparameters, optional_float, optional_int, text_field
from controlplane.storage.filestore import user_path
from shared.finetune import (
    DEFAULT_EVAL_SHARE,
    DOCUMENT_EXTENSIONS,
    HYPERPARAMETERS,
    INTEGER_HYPERPARAMETERS,
    QUESTION_STYLES,
)

MAX_PAIRS = 20_000
MAX_PAIR_CHARS = 4_000
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


def _yes(form: Mapping[str, str], name: str) -> bool:
    value = (form.get(name) or "").strip().lower()
    if value in ("", "no", "false", "0", "off"):
        return False
    if value in ("yes", "true", "1", "on"):
        return True
    raise BadRequest(f"'{name}' must be yes or no, got {value[:20]!r}")


def parse_options(form: Mapping[str, str]) -> dict[str, Any]:
    """Every optional fine-tune setting, validated now so a bad value never reaches a runner."""
    styles = [s.strip() for s in (form.get("question_styles") or "").split(",") if s.strip()]
    unknown = [s for s in styles if s not in QUESTION_STYLES]
    if unknown:
        raise BadRequest(f"unknown question style {unknown[0][:40]!r}: use any of {', '.join(QUESTION_STYLES)}")
    hyper = hyperparameters(form, HYPERPARAMETERS, INTEGER_HYPERPARAMETERS)
    chunk_tokens = optional_int(form, "chunk_tokens", 64, 2048) or 384
    overlap = optional_int(form, "overlap_tokens", 0, chunk_tokens // 2)
    eval_share = optional_float(form, "eval_share", 0.0, 0.5)
    return {
        "manually_review_questions": _yes(form, "manually_review_questions"),
        "question_styles": list(dict.fromkeys(styles)),
        "questions_per_fact": optional_int(form, "questions_per_fact", 1, 10) or 4,
        "chunk_tokens": chunk_tokens,
        "overlap_tokens": overlap if overlap is not None else min(48, chunk_tokens // 8),
        "eval_share": eval_share if eval_share is not None else DEFAULT_EVAL_SHARE,
        "hyperparameters": hyper,
    }


def parse_urls(raw: str) -> list[str]:
    urls = (raw or "").split()
    for url in urls:
        if len(url) > 2000 or not _URL.match(url):
            raise BadRequest(f"'urls' holds {url[:80]!r}, which is not an http(s) URL")
    return list(dict.fromkeys(urls))


def document_name(filename: str, max_name_bytes: int) -> str:
    """A document's name as stored: its base name, checked like any filestore path segment."""
    name = PurePosixPath(filename.replace("\\", "/")).name.strip()
    if not name or name in (".", ".."):
        raise BadRequest(f"file {filename[:80]!r} has no usable name")
    user_path(name, max_name_bytes=max_name_bytes, allow_root=False)
    if PurePosixPath(name.lower()).suffix not in DOCUMENT_EXTENSIONS:
        raise BadRequest(f"file {name[:80]!r} is not a document this server reads: use "
                         + ", ".join(DOCUMENT_EXTENSIONS))
    return name


def check_archive(name: str, stream: Any, max_inflated_bytes: int) -> None:
    """A .docx (a zip) whose members would inflate past `max_inflated_bytes` is refused: the
    sizes come from the archive's directory, read without inflating anything (the runner holds
    to its own limit as it reads, in case the directory lies). Anything that is not a readable zip
    goes on to the runner, which says what is wrong with it."""
    if PurePosixPath(name.lower()).suffix != ".docx":
        return
    try:
        with zipfile.ZipFile(stream) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    finally:
        stream.seek(0)
    if inflated > max_inflated_bytes:
        raise BadRequest(f"file {name[:80]!r} inflates to {inflated} bytes; the limit is {max_inflated_bytes}"
                         " bytes per document (HELIX_MAX_DOCUMENT_INFLATED_BYTES): remove its pictures,"
                         " split it, or send its text as .txt or .pdf")


def parse_pairs(body: Any) -> list[dict[str, str]]:
    """A reviewer's pairs: a list of {question, answer} (or Helix's ShareGPT-style
    {"conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}), or {"pairs": [...]}."""
    if isinstance(body, dict) and "pairs" in body:
        body = body["pairs"]
    if not isinstance(body, list):
        raise BadRequest('send a JSON list of {"question": ..., "answer": ...} objects')
    if len(body) > MAX_PAIRS:
        raise BadRequest(f"at most {MAX_PAIRS} pairs")
    pairs = []
    for n, item in enumerate(body):
        if isinstance(item, dict) and isinstance(item.get("conversations"), list) and len(item["conversations"]) >= 2:
            turns = item["conversations"]
            item = {"question": turns[0].get("value") if isinstance(turns[0], dict) else None,
                    "answer": turns[1].get("value") if isinstance(turns[1], dict) else None}
        if not isinstance(item, dict):
            raise BadRequest(f"pair {n} must be an object with question and answer")
        pair = {}
        for key in ("question", "answer"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"pair {n}: '{key}' must be a non-empty string")
            if len(value) > MAX_PAIR_CHARS or "\x00" in value:
                raise BadRequest(f"pair {n}: '{key}' is longer than {MAX_PAIR_CHARS} characters or holds NUL")
            text_field({key: value}, key, MAX_PAIR_CHARS)
            pair[key] = value.strip()
        for key in ("fact", "document", "style"):
            if isinstance(item.get(key), str):
                pair[key] = item[key][:500]
        pair.setdefault("fact", " ".join(pair["answer"].lower().split())[:500])  # same answer: same fact
        pairs.append(pair)
    if not pairs:
        raise BadRequest("send at least one pair")
    return pairs
