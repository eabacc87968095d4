"""The sessions API's answers as typed dictionaries, written from the server's OpenAPI document
(controlplane/contract/client_types.py writes this file; do not edit it by hand)."""
from __future__ import annotations

from typing import Literal, NotRequired, TypedDict


class ApiKey(TypedDict):
    owner: str
    owner_type: Literal["user"]
    key: str
    name: str


class Conversation(TypedDict):
    """One pair in ShareGPT's shape, as Helix's data preparation wrote it (`from`: human or gpt)."""

    conversations: list[dict[str, str]]


class Counter(TypedDict):
    count: int


class DataPrepChunk(TypedDict):
    index: int
    question_count: int
    error: str


class FileStoreItem(TypedDict):
    created: int
    size: int
    directory: bool
    name: str
    path: str
    url: str


class FilestoreConfig(TypedDict):
    user_prefix: str
    folders: list[FilestoreFolder]


class FilestoreFolder(TypedDict):
    name: str
    readonly: bool


class Interaction(TypedDict):
    id: str
    created: str
    updated: str
    scheduled: str
    completed: str
    creator: Literal["system", "user"]
    mode: Literal["", "inference", "finetune"]
    runner: str
    message: str
    messages: list[InteractionMessage]
    progress: int
    files: list[str]
    finished: bool
    metadata: dict[str, str]
    state: Literal["", "waiting", "editing", "complete", "error"]
    status: str
    error: str
    lora_dir: str
    data_prep_chunks: dict[str, list[DataPrepChunk]]
    data_prep_stage: Literal[
        "", "edit_files", "extract_text", "index_documents", "generate_questions", "edit_questions", "finetune", "complete"]


class InteractionMessage(TypedDict):
    role: str
    content: str


class RunnerTaskResponse(TypedDict):
    type: Literal["stream", "progress", "result"]
    session_id: str
    interaction_id: str
    owner: str
    message: NotRequired[str]
    progress: NotRequired[int]
    status: NotRequired[str]
    files: NotRequired[list[str]]
    lora_dir: NotRequired[str]
    error: NotRequired[str]
    done: NotRequired[bool]


class ServerConfig(TypedDict):
    filestore_prefix: str
    stripe_enabled: bool
    sentry_dsn_frontend: str
    google_analytics_frontend: str


class Session(TypedDict):
    id: str
    name: str
    created: str
    updated: str
    parent_session: str
    parent_bot: str
    child_bot: str
    config: SessionMetadata
    mode: Literal["", "inference", "finetune"]
    type: Literal["", "text", "image"]
    model_name: str
    lora_dir: str
    interactions: list[Interaction]
    owner: str
    owner_type: Literal["user"]


class SessionMetadata(TypedDict):
    original_mode: Literal["", "inference", "finetune"]
    origin: SessionOrigin
    shared: bool
    avatar: str
    priority: bool
    document_ids: dict[str, str]
    document_group_id: str


class SessionOrigin(TypedDict):
    type: Literal["", "user_created", "cloned"]
    cloned_session_id: str
    cloned_interaction_id: str


class SessionSummary(TypedDict):
    created: str
    updated: str
    scheduled: str
    completed: str
    session_id: str
    name: str
    interaction_id: str
    model_name: str
    mode: Literal["", "inference", "finetune"]
    type: Literal["", "text", "image"]
    owner: str
    lora_dir: NotRequired[str]
    summary: str
    priority: bool


class SessionsList(TypedDict):
    counter: Counter
    sessions: list[SessionSummary]


class UserConfig(TypedDict):
    stripe_subscription_active: bool
    stripe_customer_id: str
    stripe_subscription_id: str


class UserStatus(TypedDict):
    admin: bool
    user: str
    config: UserConfig


class WebsocketEvent(TypedDict):
    type: Literal["session_update", "worker_task_response"]
    session_id: str
    owner: str
    session: Session | None
    worker_task_response: RunnerTaskResponse | None
