"""Job payloads that travel through the RQ queues, and the queues' names.

The control plane enqueues a job by the dotted name of a runner entry point with one JSON
payload argument; the runner refuses any other function. Payloads are plain dicts built and
read by the dataclasses below so both sides agree on every field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class WorkKind(StrEnum):
    TEXT_INFERENCE = "text-inference"
    IMAGE_INFERENCE = "image-inference"
    TEXT_DATAPREP = "text-dataprep"    # documents -> chunks -> question/answer pairs (warm vLLM)
    TEXT_FINETUNE = "text-finetune"    # LoRA training, evaluation, adapter upload
    IMAGE_FINETUNE = "image-finetune"  # UNet LoRA on captioned images, samples, adapter upload


# The queues each kind of runner worker takes work from, first listed first served: text workers
# prepare fine-tune data on the warm vLLM server between chats, never before them. The control
# plane counts a queue's workers by it (fair share).
QUEUES_OF_WORKER: dict[WorkKind, tuple[WorkKind, ...]] = {
    WorkKind.TEXT_INFERENCE: (WorkKind.TEXT_INFERENCE, WorkKind.TEXT_DATAPREP),
    WorkKind.IMAGE_INFERENCE: (WorkKind.IMAGE_INFERENCE,),
    WorkKind.TEXT_FINETUNE: (WorkKind.TEXT_FINETUNE,),
    WorkKind.IMAGE_FINETUNE: (WorkKind.IMAGE_FINETUNE,),
}


# Dotted names of the runner's job entry points, one per kind of work. The runner executes
# jobs whose function is in this table and nothing else.
ENTRY_POINTS: dict[WorkKind, str] = {
    WorkKind.TEXT_INFERENCE: "runner.jobs.text_inference",
    WorkKind.IMAGE_INFERENCE: "runner.jobs.image_inference",
    WorkKind.TEXT_DATAPREP: "runner.dataprep.job.prepare_text",
    WorkKind.TEXT_FINETUNE: "runner.training.job.train_text",
    WorkKind.IMAGE_FINETUNE: "runner.training.image_job.train_image",
}


def queue_name(kind: WorkKind | str, model: str) -> str:
    """One queue per kind of work and model, so a runner listens only where its models are warm."""
    return f"helix:{WorkKind(kind).value}:{model}"


def job_id_for(interaction_id: str, stage: str = "") -> str:
    """A job's id is derived from its interaction (and, for a fine-tune, its stage), so the
    reconciler can tell whether it exists; a stage's job never overwrites the next stage's."""
    return f"interaction-{interaction_id}" + (f"-{stage}" if stage else "")


class _Payload:
    """Round-trips a dataclass through a JSON-safe dict, ignoring unknown keys (newer senders)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class TextInferenceJob(_Payload):
    session_id: str
    interaction_id: str
    model: str
    messages: list[dict[str, str]]  # [{"role": "user"|"assistant", "content": "..."}]
    lora_dir: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    # More of the OpenAI sampling parameters (top_p, stop, seed, n, penalties, response_format),
    # validated by the control plane and passed to the model server as they are.
    sampling: dict[str, Any] = field(default_factory=dict)
    # A plain completion of this prompt (no chat template) instead of a chat reply.
    prompt: str | None = None
    # Who asked, as an opaque tag: the runner shares its batch fairly between owners
    # (runner/text/fair_batch.py). Empty from an older control plane: one owner for all.
    owner_tag: str = ""
    # How the session uses its documents (shared.knowledge.Way), "" for a chat without any: with
    # retrieval the runner asks the control plane for the turn's best chunks and cites them.
    knowledge_way: str = ""

    def pausable(self) -> bool:
        """Whether the reply may stop and go on from its text so far as the same request: not with
        a seed (the continuation would draw other numbers), several choices, a JSON schema or
        penalties on the reply's own tokens (the text so far would become prompt)."""
        if self.sampling.get("n") not in (None, 1):
            return False
        return all(self.sampling.get(k) is None
                   for k in ("seed", "response_format", "presence_penalty", "frequency_penalty"))


@dataclass
class ImageInferenceJob(_Payload):
    session_id: str
    interaction_id: str
    model: str
    prompt: str
    num_images: int = 1
    # None: the runner uses the pipeline's own default (64 px for the tiny model, 1024 for SDXL).
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    lora_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextDataPrepJob(_Payload):
    """Documents of a fine-tune session to question/answer pairs, chunk by chunk."""
    session_id: str
    interaction_id: str
    model: str
    files: list[str]                  # filestore paths of the uploaded documents
    urls: list[str] = field(default_factory=list)
    chunk_tokens: int = 384
    overlap_tokens: int = 48
    question_styles: list[str] = field(default_factory=list)  # empty: the runner's defaults
    questions_per_fact: int = 4
    skip_chunks: list[str] = field(default_factory=list)  # "document#index" already done (retry)
    index_documents: bool = False     # retrieval: embed the documents' chunks for the session's index
    generate_questions: bool = True   # fine-tuning: write question/answer pairs (off: retrieval only)
    max_index_chunks: int = 20_000    # an index of more chunks is refused before any is embedded


@dataclass
class TextFinetuneJob(_Payload):
    """LoRA training on the session's pairs, then evaluation on the held-out ones."""
    session_id: str
    interaction_id: str
    model: str
    system_prompt: str                # the pairs themselves are read from the control plane
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    eval_share: float = 0.2
    checkpoint: str = ""              # filestore path of the last checkpoint: resume from it
    seed: int = 0                     # the order of the training rows (an OpenAI job's `seed`)
    knowledge_report: bool = False    # the session has an index: evaluate the four ways (shared.knowledge.Way)


@dataclass
class ImageFinetuneJob(_Payload):
    """LoRA training on the session's captioned images, then samples from the captions."""
    session_id: str
    interaction_id: str
    model: str
    images: list[dict[str, str]]      # [{"path": filestore path, "caption": "..."}]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""              # filestore path of the last checkpoint: resume from it
