"""What a Helix session request may say: its kind, prompt, model and generation settings, each a
declared field (the forms a client sends to POST and PUT /api/v1/sessions). Limits that depend on
the fleet (the model's context, the image budget) are checked after, by the session service."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from controlplane.http.forms import Form, Text, multiple_of
from shared.types import SessionMode, SessionType

OptionalInt = int | None
Side = Annotated[OptionalInt, Field(None, ge=64, le=2048, description="pixels, a multiple of 8"), multiple_of(8)]


class SessionKind(Form):
    """The mode and type, which choose the service that creates the session."""

    mode: SessionMode
    type: SessionType


class ImageSettings(Form):
    """An image prompt's settings: the runner's defaults for any left out."""

    num_images: OptionalInt = Field(None, ge=1, le=4)
    width: Side = None
    height: Side = None
    steps: OptionalInt = Field(None, ge=1, le=150)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    seed: OptionalInt = Field(None, ge=0, le=2**32 - 1)

    def image_params(self) -> dict[str, Any]:
        return self.model_dump(include=set(ImageSettings.model_fields), exclude_none=True)


class ContinueChat(ImageSettings):
    """PUT /api/v1/sessions/{id}: the next prompt (an image session's may carry new settings)."""

    input: Text = Field(description="the prompt")


class NewSession(ImageSettings):
    """POST /api/v1/sessions in inference mode: the first prompt and its generation settings."""

    mode: SessionMode
    type: SessionType
    input: Text = Field(description="the prompt")
    model_name: Text = Field("", max_length=500)
    name: Text = Field("", max_length=200)
    max_tokens: OptionalInt = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0.0, le=2.0)

    def job_params(self) -> dict[str, Any]:
        """The session's generation settings, as its jobs read them."""
        if self.type == SessionType.IMAGE:
            return {"image": self.image_params()}
        return {"text": self.model_dump(include={"max_tokens", "temperature"}, exclude_none=True)}


class HelixContent(BaseModel):
    """Helix's message content: text parts, joined by newlines."""

    content_type: Literal["text"] = "text"
    parts: list[StrictStr]


class HelixMessage(BaseModel):
    role: StrictStr | None = None
    content: StrictStr | HelixContent

    def as_openai(self) -> dict[str, Any]:
        text = self.content if isinstance(self.content, str) else "\n".join(self.content.parts)
        return {"role": self.role, "content": text}


class HelixChat(BaseModel):
    """POST /api/v1/sessions/chat: Helix's chat body. `session_id` continues a session of the
    caller's; without it, a new one starts on `model` (the first text model when left out).
    The messages' roles and lengths are checked as an OpenAI chat's are."""

    model_config = ConfigDict(extra="allow")

    messages: Annotated[list[HelixMessage], Field(min_length=1)]
    system: StrictStr | None = None
    model: StrictStr | None = None
    session_id: StrictStr | None = None
    stream: StrictBool = False

    def openai_messages(self) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [m.as_openai() for m in self.messages]


class SessionMeta(Form):
    """PUT /api/v1/sessions/{id}/meta, Helix's SessionMetaUpdate: the session's new name. Its `id`,
    `owner` and `owner_type`, where sent, must be the session's own: a session is never given away."""

    model_config = ConfigDict(coerce_numbers_to_str=False)
    name: Text = Field(min_length=1, max_length=200, description="the session's new name (1 to 200 characters)")
    id: Text = Field("", max_length=200)
    owner: Text = Field("", max_length=200)
    owner_type: Text = Field("", max_length=20)


class SessionSettings(Form):
    """PUT /api/v1/sessions/{id}/config, Helix's SessionMetadata: what its owner may set. Helix's
    client sends the whole object back; the keys this platform derives (original_mode, origin,
    document_ids, document_group_id, manually_review_questions, system_prompt, helix_version) are
    read from where they live and left as they are."""

    model_config = ConfigDict(coerce_numbers_to_str=False)
    shared: bool | None = None
    avatar: Text | None = Field(None, max_length=2000)
    priority: bool | None = None

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)
