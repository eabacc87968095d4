"""The messages a runner sends the control plane, one declared type each (pydantic).

The runner builds them and the control plane parses the body with the same type, so a field is
named, typed and bounded in one place; a body that does not fit is answered with a 400 naming the
field. Types are strict where the wire is JSON: a count is a whole number, never "5" or 5.0; a
flag is true or false, never "false" or 0.

WIRE_VERSION counts incompatible changes to these messages. Every runner request carries it in the
WIRE_VERSION_HEADER header, and the control plane refuses a runner of another version with an
error that says which side to upgrade, instead of misreading its messages.
"""
from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from shared.knowledge import EMBEDDING_DIMENSIONS, MAX_QUESTIONS_PER_REQUEST
from shared.runner_state import RunnerState
from shared.types import DataPrepStage, InteractionState, SessionType

WIRE_VERSION = 2  # 2: the index and retrieval messages (IndexReport, RetrievalRequest)
WIRE_VERSION_HEADER = "X-Helix-Wire-Version"

Count = Annotated[StrictInt, Field(ge=0, le=1_000_000)]
DocumentName = Annotated[StrictStr, Field(max_length=2000)]
ErrorText = Annotated[StrictStr, Field(max_length=4000)]


class Message(BaseModel):
    """A runner's message: unknown fields are refused (a misspelt one would otherwise be lost)."""

    model_config = ConfigDict(extra="forbid")

    def to_wire(self) -> dict[str, Any]:
        """What was set (the other side has the defaults), as JSON has it: a NaN or infinite
        number (a diverged loss) becomes null, where requests would refuse to send it at all."""
        return json.loads(self.model_dump_json(exclude_unset=True))


class InteractionUpdate(Message):
    """One report on an interaction: POST /api/v1/runner/sessions/{id}/interactions/{id}.

    `delta` appends text to the message (streamed tokens); `message` replaces it. A `final`
    update (state complete or error) closes the interaction; later updates are refused, so a
    job that ran twice cannot overwrite the result that landed first."""

    runner: StrictStr = ""  # filled in by the runner's client
    state: InteractionState = InteractionState.WAITING
    delta: StrictStr = ""
    message: StrictStr | None = None
    progress: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    status: StrictStr | None = None
    files: list[StrictStr] | None = None
    error: StrictStr = ""
    final: StrictBool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Fine-tunes: the stage reached, and the adapter's folder once trained.
    data_prep_stage: DataPrepStage | None = None
    lora_dir: StrictStr | None = None


class DocumentReport(Message):
    """A document read (or not): POST …/finetune/document. Its length is the runner's to bound
    (HELIX_DATAPREP_MAX_DOCUMENT_CHARS): a bound here refused every document over a million
    characters once."""

    document: DocumentName
    chars: Annotated[StrictInt, Field(ge=0, le=2**53)] = 0
    chunks: Count = 0
    error: ErrorText = ""


class QuestionPair(Message):
    """A question about one fact of a chunk, and its answer; `fact` is document#chunk#sentence."""

    question: StrictStr
    answer: StrictStr
    fact: StrictStr
    style: StrictStr


class ChunkReport(Message):
    """One chunk's pairs (replacing an earlier attempt's), filter counts and error:
    POST …/finetune/chunk."""

    document: DocumentName
    index: Count
    pairs: list[QuestionPair] = Field(default_factory=list)
    dropped: dict[StrictStr, StrictInt] = Field(default_factory=dict)  # a filter's name: what it dropped
    coverage: dict[str, Any] = Field(default_factory=dict)
    note: Annotated[StrictStr, Field(max_length=500)] = ""
    error: ErrorText = ""


class MetricsReport(Message):
    """Training points to add to the history: POST …/finetune/metrics. A run that starts sends
    `from_step`, the step it starts at; what an interrupted run reported past it is dropped."""

    # A loss that diverged (NaN, infinite) travels as null: JSON and PostgreSQL have no NaN.
    points: Annotated[list[dict[str, StrictInt | StrictFloat | None]], Field(max_length=10_000)]
    from_step: Annotated[StrictInt, Field(ge=0)] | None = None


class PreparedReport(Message):
    """Data preparation is over: POST …/finetune/prepared. What writing its questions used, for
    metering (a runner of before this message sends no body: nothing counted)."""

    prompt_tokens: Annotated[StrictInt, Field(ge=0, le=2**53)] = 0
    completion_tokens: Annotated[StrictInt, Field(ge=0, le=2**53)] = 0


Embedding = Annotated[list[StrictFloat], Field(min_length=EMBEDDING_DIMENSIONS, max_length=EMBEDDING_DIMENSIONS)]


class IndexedChunk(Message):
    """One chunk of a document for retrieval, with its sentence embedding."""

    index: Count
    text: Annotated[StrictStr, Field(min_length=1, max_length=20_000)]
    embedding: Embedding


class IndexReport(Message):
    """Some of a document's chunks for the session's index: POST …/finetune/index. `first` marks a
    document's first batch, which replaces what an earlier attempt indexed of it. Nothing is
    searched until the `indexed` report says the index is whole."""

    document: DocumentName
    chunks: Annotated[list[IndexedChunk], Field(max_length=256)]
    first: StrictBool = False


class IndexedReport(Message):
    """The index is whole: POST …/finetune/indexed. From now on the session's chats search it."""

    documents: Count = 0
    chunks: Count = 0
    seconds: Annotated[StrictFloat, Field(ge=0)] = 0.0


class Question(Message):
    text: Annotated[StrictStr, Field(max_length=20_000)]
    embedding: Embedding


class RetrievalRequest(Message):
    """The best chunks for each question, from the index of the documents the interaction's session
    learns from: POST /api/v1/runner/sessions/{id}/interactions/{id}/retrieve. The control plane
    decides which index (the session's own, or the fine-tune a /v1 model names) and whose."""

    questions: Annotated[list[Question], Field(min_length=1, max_length=MAX_QUESTIONS_PER_REQUEST)]
    limit: Annotated[StrictInt, Field(ge=1, le=20)] = 3


InfoValue = StrictBool | StrictInt | StrictFloat | Annotated[StrictStr, Field(max_length=200)] | None


class Registration(Message):
    """A runner announcing itself, again every few seconds: POST /api/v1/runner/register.
    `info` holds static facts the scheduler reads (worker counts, the model's limits, the image
    budget); `state` what it holds and does now (shared/runner_state.py)."""

    runner_id: StrictStr
    models: dict[SessionType, list[StrictStr]] = Field(default_factory=dict)
    info: dict[Annotated[StrictStr, Field(max_length=64)], InfoValue] = Field(default_factory=dict, max_length=32)
    state: RunnerState = Field(default_factory=RunnerState)
    # The last of the control plane's forgotten adapters this runner has deleted (Registered).
    forgotten_seen: Annotated[StrictInt, Field(ge=0)] = 0


class Registered(BaseModel):
    """The control plane's answer to a Registration. `forget` names adapters whose sessions were
    deleted after `forgotten_seen`, oldest first, in pages: the runner deletes them from its disks
    and its model servers, then reports `forgotten_through` as its next `forgotten_seen`. Fields
    it does not know are ignored, so a runner reads the answer of a newer control plane."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr
    forget: list[StrictStr] = Field(default_factory=list)
    forgotten_through: Annotated[StrictInt, Field(ge=0)] = 0
