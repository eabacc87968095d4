"""The state a runner reports every few seconds with its registration: what it holds and does now.

The runner builds it (runner/state/report.py), the control plane parses it as `RunnerState` (inside
shared/wire.py's Registration) and stores it on the runner's row for listings, the dashboard and
metrics. It is separate from the registration's `info` (static facts the scheduler reads): this one
changes from report to report.

    {"version": "0.1.0",                        the runner's package version
     "report_interval": 5.0,                    seconds between its reports
     "models": [{"type": "text", "name": "helix/tiny-chat", "state": "loaded"}],
     "adapters": {"text": ["lora-…"], "image": ["lora-…"]},   loaded or cached, at most 64 each
     "memory": {"host": {"total_bytes": …, "free_bytes": …},
                "gpu": [{"index": 0, "name": "…", "total_bytes": …, "free_bytes": …}]},  no GPU: no "gpu"
     "jobs": {"text-inference": 2, "text-finetune": 0},        running now, by kind of work
     "workers": {"text-inference": 64, "text-finetune": 1}}    listening, by kind of work

Every part is optional: a runner reports what it can measure cheaply.
"""
from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr,
                      model_validator)

MODEL_STATES = ("loaded", "starting", "down")
MAX_ADAPTERS = 64
MAX_GPUS = 16
MAX_BYTES = 16 * 1024  # the whole report as JSON


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must be printable text")
    return value


Name = Annotated[StrictStr, Field(min_length=1, max_length=200), AfterValidator(_printable)]
WorkKindName = Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_printable)]
Bytes = Annotated[StrictInt, Field(ge=0, le=2**60)]
Count = Annotated[StrictInt, Field(ge=0, le=10**6)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Memory(_Part):
    total_bytes: Bytes | None = None
    free_bytes: Bytes | None = None


class GpuMemory(Memory):
    index: Annotated[StrictInt, Field(ge=0, le=MAX_GPUS)] | None = None
    name: Name | None = None


class MemoryState(_Part):
    host: Memory | None = None
    gpu: Annotated[list[GpuMemory], Field(max_length=MAX_GPUS)] = Field(default_factory=list)


class ModelState(_Part):
    type: Annotated[StrictStr, Field(min_length=1, max_length=16)]
    name: Name
    state: Literal[MODEL_STATES] = "loaded"


class RunnerState(_Part):
    """Bounded and plain: small objects of known keys, numbers, short strings."""

    version: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    report_interval: Annotated[StrictInt | StrictFloat, Field(gt=0, le=86400)] | None = None
    models: Annotated[list[ModelState], Field(max_length=32)] = Field(default_factory=list)
    adapters: dict[Literal["text", "image"], Annotated[list[Name], Field(max_length=MAX_ADAPTERS)]] = \
        Field(default_factory=dict)
    memory: MemoryState = Field(default_factory=MemoryState)
    jobs: Annotated[dict[WorkKindName, Count], Field(max_length=16)] = Field(default_factory=dict)
    workers: Annotated[dict[WorkKindName, Count], Field(max_length=16)] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _small(cls, value):
        if isinstance(value, dict) and len(json.dumps(value, default=str)) > MAX_BYTES:
            raise ValueError(f"must be at most {MAX_BYTES} bytes of JSON")
        return value

    def stored(self) -> dict:
        """What the runner's row keeps: only what it reported."""
        return self.model_dump(mode="json", exclude_unset=True)
