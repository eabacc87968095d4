"""POST /v1/fine_tuning/jobs as a declared body: the base model, the files, and the training
settings in OpenAI's names ("auto" or a number within the trainer's bounds)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator
from pydantic_core import PydanticCustomError

from controlplane.http.forms import clean_text
from controlplane.openai.input import Number, OpenAIBody
from shared.finetune import HYPERPARAMETERS

MAX_SUFFIX_CHARS = 64
MAX_METADATA_KEYS = 16
DEFAULT_LEARNING_RATE = HYPERPARAMETERS["learning_rate"][0]
_, _EPOCHS_LOW, _EPOCHS_HIGH = HYPERPARAMETERS["epochs"]
_, _BATCH_LOW, _BATCH_HIGH = HYPERPARAMETERS["batch_size"]
_, _LR_LOW, _LR_HIGH = HYPERPARAMETERS["learning_rate"]

Auto = Literal["auto"]
CleanStr = Annotated[StrictStr, AfterValidator(clean_text)]
FileId = Annotated[StrictStr, AfterValidator(clean_text), Field(min_length=1, max_length=200)]


class JobHyperparameters(BaseModel):
    """OpenAI's three settings; the learning rate as a multiple of the trainer's default."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known(cls, given: Any) -> Any:
        unknown = sorted(set(given) - set(cls.model_fields)) if isinstance(given, dict) else []
        if unknown:
            raise PydanticCustomError("unknown", "unknown hyperparameter {name}: use n_epochs, batch_size,"
                                      " learning_rate_multiplier", {"name": repr(str(unknown[0])[:40])})
        return given

    n_epochs: Auto | Annotated[StrictInt, Field(ge=int(_EPOCHS_LOW), le=int(_EPOCHS_HIGH))] = "auto"
    batch_size: Auto | Annotated[StrictInt, Field(ge=int(_BATCH_LOW), le=int(_BATCH_HIGH))] = "auto"
    learning_rate_multiplier: Auto | Annotated[Number, Field(ge=_LR_LOW / DEFAULT_LEARNING_RATE,
                                                              le=_LR_HIGH / DEFAULT_LEARNING_RATE)] = "auto"

    def for_trainer(self) -> dict[str, Any]:
        """In the trainer's names, those not left to it."""
        chosen = {"epochs": self.n_epochs, "batch_size": self.batch_size,
                  "learning_rate": (self.learning_rate_multiplier * DEFAULT_LEARNING_RATE
                                    if self.learning_rate_multiplier != "auto" else "auto")}
        return {name: value for name, value in chosen.items() if value != "auto"}


class SupervisedMethod(OpenAIBody):
    hyperparameters: JobHyperparameters | None = None


class JobMethod(OpenAIBody):
    type: Literal["supervised"] = "supervised"
    supervised: SupervisedMethod | None = None


class FineTuningJobBody(OpenAIBody):
    """POST /v1/fine_tuning/jobs."""

    model: Annotated[StrictStr, Field(pattern=r"\S", max_length=500)]
    training_file: FileId
    validation_file: FileId | None = None
    hyperparameters: JobHyperparameters | None = None
    method: JobMethod | None = None
    suffix: Annotated[CleanStr, Field(max_length=MAX_SUFFIX_CHARS)] | None = None
    metadata: Annotated[dict[Annotated[CleanStr, Field(max_length=64)], Annotated[CleanStr, Field(max_length=512)]],
                        Field(max_length=MAX_METADATA_KEYS)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _served(cls, body: Any) -> Any:
        if isinstance(body, dict) and body.get("integrations"):
            raise PydanticCustomError("unsupported", "'integrations' are not supported by this server")
        return body

    @model_validator(mode="after")
    def _one_place_for_settings(self) -> FineTuningJobBody:
        if self.hyperparameters is not None and self.method and self.method.supervised \
                and self.method.supervised.hyperparameters is not None:
            raise PydanticCustomError("conflict", "give hyperparameters or method.supervised.hyperparameters, not both")
        return self

    def chosen_hyperparameters(self) -> JobHyperparameters:
        """From `hyperparameters` or `method.supervised.hyperparameters`; "auto" where neither says."""
        if self.hyperparameters is not None:
            return self.hyperparameters
        supervised = self.method.supervised if self.method else None
        return (supervised.hyperparameters if supervised else None) or JobHyperparameters()
