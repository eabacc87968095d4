"""What a fine-tune request may say, checked before anything is stored: its settings, URLs,
document names, and a reviewer's question/answer pairs. Each problem is a 400 that says what to fix."""
from __future__ import annotations

import re
import zipfile
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import (AfterValidator, AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints,
                      TypeAdapter, ValidationError, ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from controlplane.errors import BadRequest
from controlplane.http.forms import Form, Text, clean_text, describe, hyperparameter_form
from controlplane.sessions.input import SessionKind
from controlplane.storage.filestore import user_path
from shared.finetune import (
    DEFAULT_EVAL_SHARE,
    DOCUMENT_EXTENSIONS,
    HYPERPARAMETERS,
    INTEGER_HYPERPARAMETERS,
    QUESTION_STYLES,
)
from shared.knowledge import Way

MAX_PAIRS = 20_000
MAX_PAIR_CHARS = 4_000
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


def _urls(value: Any) -> list[str]:
    """`urls`: whitespace-separated in a form, or a JSON list; each an http(s) URL, once."""
    urls = value.split() if isinstance(value, str) else value
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise PydanticCustomError("urls", "must be URLs separated by spaces or newlines")
    for url in urls:
        if len(url) > 2000 or not _URL.match(url):
            raise PydanticCustomError("url", "holds {url}, which is not an http(s) URL", {"url": repr(url[:80])})
    return list(dict.fromkeys(urls))


def _styles(value: Any) -> list[str]:
    """`question_styles`: comma-separated names (or a JSON list), each one of QUESTION_STYLES."""
    styles = value.split(",") if isinstance(value, str) else value
    if not isinstance(styles, list) or not all(isinstance(s, str) for s in styles):
        raise PydanticCustomError("styles", "must be style names separated by commas")
    styles = [s.strip() for s in styles if s.strip()]
    unknown = [s for s in styles if s not in QUESTION_STYLES]
    if unknown:
        raise PydanticCustomError("style", "holds the unknown question style {style}: use any of {known}",
                                  {"style": repr(unknown[0][:40]), "known": ", ".join(QUESTION_STYLES)})
    return list(dict.fromkeys(styles))


Urls = Annotated[list[str], BeforeValidator(_urls)]


class DocumentsForm(Form):
    """PUT /api/v1/sessions/{id}/finetune/documents: more documents (files ride beside it)."""

    input: Text = ""
    urls: Urls = Field(default_factory=list, description="http(s) URLs separated by spaces")


TextHyperparameters = hyperparameter_form("TextHyperparameters", HYPERPARAMETERS, INTEGER_HYPERPARAMETERS)


class TextFinetuneForm(SessionKind, DocumentsForm, TextHyperparameters):
    """POST /api/v1/sessions in finetune mode, type text: documents (as files or urls) and every
    optional setting of data preparation and training."""

    name: Text = Field("", max_length=200)
    model_name: Text = Field("", max_length=500)
    # Helix's web app sent it as manuallyReviewQuestions.
    manually_review_questions: bool = Field(False, validation_alias=AliasChoices("manually_review_questions",
                                                                               "manuallyReviewQuestions"))
    question_styles: Annotated[list[str], BeforeValidator(_styles)] = Field(default_factory=list)
    questions_per_fact: int = Field(4, ge=1, le=10)
    chunk_tokens: int = Field(384, ge=64, le=2048)
    overlap_tokens: int | None = Field(None, ge=0, le=1024)
    eval_share: float = Field(DEFAULT_EVAL_SHARE, ge=0.0, le=0.5)
    # Helix's later names for the two ways to learn from the documents. Neither given: both run,
    # and the knowledge report picks the way the session's chats use.
    rag_enabled: bool = Field(True, description="index the documents for retrieval (yes/no)")
    text_finetune_enabled: bool = Field(True, description="fine-tune on question/answer pairs (yes/no)")

    @model_validator(mode="after")
    def _one_way_at_least(self) -> "TextFinetuneForm":
        if not (self.rag_enabled or self.text_finetune_enabled):
            raise PydanticCustomError("ways", "rag_enabled and text_finetune_enabled are both no: turn on"
                                      " at least one way to learn from the documents")
        return self

    def knowledge(self) -> dict[str, Any]:
        """How the session learns and is served: the way its chats use, and whether the user chose
        it (else the knowledge report does, once both ways are trained and scored)."""
        chose = bool({"rag_enabled", "text_finetune_enabled"} & self.model_fields_set)
        way = (Way.BOTH if self.rag_enabled and self.text_finetune_enabled
               else Way.RETRIEVAL if self.rag_enabled else Way.FINETUNE)
        return {"retrieval": self.rag_enabled, "finetune": self.text_finetune_enabled, "way": way.value,
                "chosen_by": "user" if chose or way != Way.BOTH else "report"}

    @field_validator("overlap_tokens")
    @classmethod
    def _within_half_a_chunk(cls, value: int | None, info: ValidationInfo) -> int | None:
        high = info.data.get("chunk_tokens", cls.model_fields["chunk_tokens"].default) // 2
        if value is not None and value > high:
            raise PydanticCustomError("range", "must be between 0 and {high}, got {value}",
                                      {"high": high, "value": value})
        return value

    def options(self) -> dict[str, Any]:
        """The session's fine-tune settings, as its jobs read them."""
        return {
            "manually_review_questions": self.manually_review_questions,
            "question_styles": self.question_styles,
            "questions_per_fact": self.questions_per_fact,
            "chunk_tokens": self.chunk_tokens,
            "overlap_tokens": (self.overlap_tokens if self.overlap_tokens is not None
                               else min(48, self.chunk_tokens // 8)),
            "eval_share": self.eval_share,
            "hyperparameters": self.hyperparameters(),
            "knowledge": self.knowledge(),
        }


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


PairText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PAIR_CHARS),
                     AfterValidator(clean_text)]
Note = Annotated[str, BeforeValidator(lambda v: v[:500] if isinstance(v, str) else None)]


class ReviewPair(BaseModel):
    """One reviewed pair: {question, answer}, or Helix's ShareGPT-style
    {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}. `fact`
    groups the questions of one fact (the same answer is the same fact, when it is not given)."""

    model_config = ConfigDict(extra="ignore")

    question: PairText
    answer: PairText
    fact: Note | None = None
    document: Note | None = None
    style: Note | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_conversation(cls, item: Any) -> Any:
        turns = item.get("conversations") if isinstance(item, dict) else None
        if isinstance(turns, list) and len(turns) >= 2:
            value = [t.get("value") if isinstance(t, dict) else None for t in turns[:2]]
            return {**item, "question": value[0], "answer": value[1]}
        return item

    def stored(self) -> dict[str, str]:
        pair = self.model_dump(exclude_none=True)
        pair.setdefault("fact", " ".join(self.answer.lower().split())[:500])
        return pair


ReviewPairs = TypeAdapter(Annotated[list[ReviewPair], Field(min_length=1, max_length=MAX_PAIRS)])


def parse_pairs(body: Any) -> list[dict[str, str]]:
    """A reviewer's pairs: a JSON list of them, or {"pairs": [...]}."""
    if isinstance(body, dict) and "pairs" in body:
        body = body["pairs"]
    if not isinstance(body, list):
        raise BadRequest('send a JSON list of {"question": ..., "answer": ...} objects')
    try:
        return [pair.stored() for pair in ReviewPairs.validate_python(body)]
    except ValidationError as err:
        error = err.errors()[0]
        if not error["loc"]:  # the list itself
            raise BadRequest("send at least one pair" if error["type"] == "too_short"
                             else f"at most {MAX_PAIRS} pairs") from None
        n, *field = error["loc"]
        if not field or error["type"] == "model_type":
            raise BadRequest(f"pair {n} must be an object with question and answer") from None
        raise BadRequest(f"pair {n}: {describe(ReviewPair, {**error, 'loc': tuple(field)})}") from None
