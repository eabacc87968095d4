"""What a Helix session request may say: its kind, prompt, model and generation settings, each a
declared field (the forms a client sends to POST and PUT /api/v1/sessions). Limits that depend on
the fleet (the model's context, the image budget) are checked after, by the session service."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

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
