"""A JSON body read with the declared type of its message (pydantic), or a 400 naming what to fix."""
from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from controlplane.errors import BadRequest

M = TypeVar("M", bound=BaseModel)
_MOST_PROBLEMS = 5
_TYPE_TAGS = {"str", "int", "float", "bool", "none", "constrained-str", "constrained-int", "constrained-float"}


def field_path(loc: tuple) -> str:
    """Where a problem is, as a client spells it: `messages[0].content`. pydantic also names the
    member of a union it tried (`str`, `list[TextPart]`, `constrained-str`): those are left out."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _TYPE_TAGS and "[" not in part and not part[:1].isupper():
            path += f".{part}"  # a field, or a key of a mapping
    return path.lstrip(".")


def _problem(error: dict[str, Any], model: type[BaseModel]) -> str:
    field = field_path(error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        known = f" (known: {', '.join(model.model_fields)})" if len(error["loc"]) == 1 else ""
        return f"{field}: unknown field{known}"
    return f"{field}: {error['msg']}"


def parsed(model: type[M], body: Any, what: str) -> M:
    """`body` (a request's JSON, None when it was not JSON) as `model`."""
    if not isinstance(body, dict):
        raise BadRequest(f"send the {what} as a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        problems = list(dict.fromkeys(_problem(e, model) for e in err.errors()))
        more = f" (and {len(problems) - _MOST_PROBLEMS} more)" if len(problems) > _MOST_PROBLEMS else ""
        raise BadRequest(f"{what}: " + "; ".join(problems[:_MOST_PROBLEMS]) + more) from None
