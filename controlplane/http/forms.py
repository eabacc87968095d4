"""Form and JSON bodies of the Helix API, read with a declared model (pydantic).

A Helix client sends form fields (urlencoded or multipart) or, from an SDK, a JSON object; both
arrive here as one mapping. A blank field counts as absent, a number may come as text, and fields
the model does not name go unread (Helix's own clients send more than this server reads). The
first problem is a 400 in the words this API has always answered with: "'epochs' must be between
1 and 100, got 500", "missing 'mode': send mode=inference|finetune"."""
from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from annotated_types import Ge, Le
from flask import current_app, request
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from controlplane.errors import BadRequest

F = TypeVar("F", bound="Form")


def clean_text(value: str, info: ValidationInfo) -> str:
    """Text that PostgreSQL can store and a file can hold, within its length limit: the field's
    own `max_length`, or the server's setting named in the validation context."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, possible in JSON
        raise PydanticCustomError("unicode", "is not valid Unicode text") from None
    if "\x00" in value:
        raise PydanticCustomError("nul", "must not contain NUL characters")
    limit = (info.context or {}).get(f"{info.field_name}_max_chars")
    if limit is not None and len(value) > limit:
        raise PydanticCustomError("too_long", "is {length} characters; the limit is {limit}",
                                  {"length": len(value), "limit": limit})
    return value


Text = Annotated[str, AfterValidator(clean_text)]
"""A text field: valid Unicode without NUL."""


def multiple_of(step: int):
    """Checked after the bounds, so that a value out of range is told its range first."""
    def check(value: int | None) -> int | None:
        if value is not None and value % step:
            raise PydanticCustomError("multiple", "must be a multiple of {step}, got {value}",
                                      {"step": step, "value": value})
        return value
    return AfterValidator(check)


class Form(BaseModel):
    """A body of form fields or a JSON object; see the module's docstring for how it is read."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        """Blank and null fields are absent; a field that is not text is read without the spaces
        around it (" 5 " is 5), and JSON's true or false only as a yes/no field."""
        if not isinstance(data, Mapping):
            return data
        read = {}
        for name, value in data.items():
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            field = cls.model_fields.get(name)
            if isinstance(value, str) and field is not None and field.annotation is not str:
                value = value.strip()
            elif isinstance(value, bool) and field is not None and field.annotation is not bool:
                value = str(value).lower()  # JSON's true is not 1: as a form would send it
            read[name] = value
        return read


class Hyperparameters(Form):
    """A fine-tune's training settings: those given, each within its bounds."""

    hyperparameter_names: ClassVar[frozenset[str]] = frozenset()

    def hyperparameters(self) -> dict[str, float]:
        return self.model_dump(include=set(self.hyperparameter_names), exclude_none=True)


def hyperparameter_form(name: str, bounds: Mapping[str, tuple], integers: set[str]) -> type[Hyperparameters]:
    """The settings of a (default, low, high) table as declared fields, all optional: one table
    in shared/ stays what the runner trains with and what the door accepts."""
    fields = {key: (int | None if key in integers else float | None,
                    Field(None, ge=int(low) if key in integers else low, le=int(high) if key in integers else high))
              for key, (_, low, high) in bounds.items()}
    model = create_model(name, __base__=Hyperparameters, **fields)
    model.hyperparameter_names = frozenset(bounds)
    return model


def _choices(annotation: Any) -> str:
    members = annotation if isinstance(annotation, type) and issubclass(annotation, enum.Enum) else ()
    return "|".join(str(m.value) for m in members)


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    field = model.model_fields.get(name)
    metadata = field.metadata if field is not None else []
    low = next((m.ge for m in metadata if isinstance(m, Ge)), None)
    high = next((m.le for m in metadata if isinstance(m, Le)), None)
    return low, high


def _shown(value: Any) -> str:
    return repr(value[:40]) if isinstance(value, str) else repr(value)


def describe(model: type[BaseModel], error: dict[str, Any]) -> str:
    """One pydantic problem in this API's words."""
    name = ".".join(str(part) for part in error["loc"]) or "body"
    kind, given = error["type"], error.get("input")
    field = model.model_fields.get(str(error["loc"][0])) if error["loc"] else None
    if kind == "missing":
        choices = _choices(field.annotation) if field is not None else ""
        if choices:
            return f"missing '{name}': send {name}={choices}"
        what = f"{field.description} as " if field is not None and field.description else ""
        return f"missing '{name}': send {what}{name}=..."
    if kind == "enum":
        return f"unknown {name} {_shown(given)}: use one of {_choices(field.annotation)}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"'{name}' must be a whole number, got {_shown(given)}"
    if kind in ("float_parsing", "float_type"):
        return f"'{name}' must be a number, got {_shown(given)}"
    if kind in ("greater_than_equal", "less_than_equal", "finite_number"):
        low, high = _bounds(model, name)
        return f"'{name}' must be between {low} and {high}, got {str(given)[:40]}"
    if kind in ("bool_parsing", "bool_type"):
        return f"'{name}' must be yes or no, got {_shown(given)}"
    if kind == "string_type":
        return f"'{name}' must be text, not {type(given).__name__}"
    if kind == "string_pattern_mismatch" and field is not None and field.description:
        return f"'{name}' must be {field.description}"
    if kind == "string_too_long":
        return f"'{name}' is {len(given)} characters; the limit is {error['ctx']['max_length']}"
    if kind == "string_too_short":
        return f"'{name}' must not be empty"
    return f"'{name}' {error['msg']}"


def request_fields() -> Any:
    """The request's fields: a form (urlencoded or multipart), or a JSON object from an SDK."""
    return request.get_json(silent=True) if request.is_json else request.form.to_dict()


def read_form(model: type[F], form: Any, **limits: int) -> F:
    """`form` (a mapping of fields, or a request's JSON) as `model`, or a 400 naming the first
    problem. `limits`: text limits that are the server's settings, as `<field>_max_chars`."""
    if not isinstance(form, Mapping):
        raise BadRequest("JSON body must be an object")
    try:
        return model.model_validate(form, context=limits)
    except ValidationError as err:
        raise BadRequest(describe(model, err.errors()[0])) from None


def read_request(model: type[F], fields: Any = None) -> F:
    """The request's fields (or `fields` already read from it) as `model`, held to the server's
    text limits (HELIX_MAX_INPUT_CHARS for a prompt)."""
    return read_form(model, request_fields() if fields is None else fields,
                     input_max_chars=current_app.config["HELIX"].max_input_chars)
