"""Helix's wire types as its clients read them: helixml/helix at 4d4653723f3a (2024-01-15),
`api/pkg/types/types.go` and `enums.go`, `api/pkg/filestore/types.go`, and the web app's
`frontend/src/types.ts`. Written here from their field names and JSON types (Go's `time.Time`
is RFC 3339 text, its strings are never null); not a copy of Helix's files.

The sessions API's answers follow them: they are the response schemas of the OpenAPI document
(contract/openapi.py), and the suite checks real answers against them. Strict: a field that is
missing, null where Helix never sent null, or of another JSON type fails, as would a value outside
Helix's enumerations. Fields this platform adds beside Helix's are allowed.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict


def _rfc3339(text: str) -> str:
    datetime.fromisoformat(text.replace("Z", "+00:00"))  # raises on anything else
    return text


GoTime = Annotated[str, AfterValidator(_rfc3339)]
SessionMode = Literal["", "inference", "finetune"]
SessionType = Literal["", "text", "image"]
CreatorType = Literal["system", "user"]
InteractionState = Literal["", "waiting", "editing", "complete", "error"]
# Helix's Go type is an open string; "index_documents" is this platform's retrieval stage (Helix's
# later releases named theirs "index_rag").
TextDataPrepStage = Literal["", "edit_files", "extract_text", "index_documents", "generate_questions",
                            "edit_questions", "finetune", "complete"]
OwnerType = Literal["user"]
SessionOriginType = Literal["", "user_created", "cloned"]


class HelixType(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class DataPrepChunk(HelixType):
    index: int
    question_count: int
    error: str


class InteractionMessage(HelixType):
    role: str
    content: str


class Interaction(HelixType):
    id: str
    created: GoTime
    updated: GoTime
    scheduled: GoTime
    completed: GoTime
    creator: CreatorType
    mode: SessionMode
    runner: str
    message: str
    messages: list[InteractionMessage]
    progress: int
    files: list[str]
    finished: bool
    metadata: dict[str, str]
    state: InteractionState
    status: str
    error: str
    lora_dir: str
    data_prep_chunks: dict[str, list[DataPrepChunk]]
    data_prep_stage: TextDataPrepStage


class SessionOrigin(HelixType):
    type: SessionOriginType
    cloned_session_id: str
    cloned_interaction_id: str


class SessionMetadata(HelixType):
    original_mode: SessionMode
    origin: SessionOrigin
    shared: bool
    avatar: str
    priority: bool
    document_ids: dict[str, str]
    document_group_id: str


class Session(HelixType):
    id: str
    name: str
    created: GoTime
    updated: GoTime
    parent_session: str
    parent_bot: str
    child_bot: str
    config: SessionMetadata
    mode: SessionMode
    type: SessionType
    model_name: str
    lora_dir: str
    interactions: list[Interaction]
    owner: str
    owner_type: OwnerType


class SessionSummary(HelixType):
    created: GoTime
    updated: GoTime
    scheduled: GoTime
    completed: GoTime
    session_id: str
    name: str
    interaction_id: str
    model_name: str
    mode: SessionMode
    type: SessionType
    owner: str
    lora_dir: str = ""  # omitempty in Helix
    summary: str
    priority: bool


class Counter(HelixType):
    count: int


class SessionsList(HelixType):
    counter: Counter
    sessions: list[SessionSummary]


class ApiKey(HelixType):
    owner: str
    owner_type: OwnerType
    key: str
    name: str


class FileStoreItem(HelixType):
    created: int
    size: int
    directory: bool
    name: str
    path: str
    url: str


class FilestoreFolder(HelixType):
    name: str
    readonly: bool


class FilestoreConfig(HelixType):
    user_prefix: str
    folders: list[FilestoreFolder]


class ServerConfig(HelixType):
    filestore_prefix: str
    stripe_enabled: bool
    sentry_dsn_frontend: str
    google_analytics_frontend: str


class UserConfig(HelixType):
    stripe_subscription_active: bool
    stripe_customer_id: str
    stripe_subscription_id: str


class UserStatus(HelixType):
    admin: bool
    user: str
    config: UserConfig


class Conversation(HelixType):
    """One pair in ShareGPT's shape, as Helix's data preparation wrote it (`from`: human or gpt)."""

    conversations: list[dict[Literal["from", "value"], str]]


class RunnerTaskResponse(HelixType):
    type: Literal["stream", "progress", "result"]
    session_id: str
    interaction_id: str
    owner: str
    message: str = ""   # these with omitempty in Helix
    progress: int = 0
    status: str = ""
    files: list[str] = []
    lora_dir: str = ""
    error: str = ""
    done: bool = False


class WebsocketEvent(HelixType):
    type: Literal["session_update", "worker_task_response"]
    session_id: str
    owner: str
    session: Session | None
    worker_task_response: RunnerTaskResponse | None


# Every type above: the OpenAPI document's components hold them all (the user websocket's messages
# too, which no HTTP answer carries), and the Python client's types are written from them.
WIRE_TYPES = tuple(t for t in list(globals().values())
                   if isinstance(t, type) and issubclass(t, HelixType) and t is not HelixType)
