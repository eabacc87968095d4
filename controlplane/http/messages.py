"""A JSON body read with the declared type of its message (pydantic), or a 400 naming what to fix."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from controlplane.errors import BadRequest

M = TypeVar("M", bound=BaseModel)
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


def _problem(path: str, error: dict[str, Any], model: type[BaseModel]) -> str:
    if error["type"] == "extra_forbidden":
        known = f" (known: {', '.join(model.model_fields)})" if len(error["loc"]) == 1 else ""
        return f"{path or 'body'}: unknown field{known}"
    return f"{path or 'body'}: {error['msg']}"


def validated(model: type[M], body: Any, *, not_an_object: str,
              describe: Callable[[str, dict[str, Any]], str], most: int = 5, prefix: str = "") -> M:
    """`body` (a request's JSON, None when it was not JSON) as `model`, or a 400 listing the first
    `most` problems, each as `describe(field path, pydantic's error)` words it."""
    if not isinstance(body, dict):
        raise BadRequest(not_an_object)
    try:
        return model.model_validate(body)
    except ValidationError as err:
        problems = list(dict.fromkeys(describe(field_path(e["loc"]), e) for e in err.errors()))
        more = f" (and {len(problems) - most} more)" if len(problems) > most else ""
        raise BadRequest(prefix + "; ".join(problems[:most]) + more) from None


def parsed(model: type[M], body: Any, what: str) -> M:
    """A runner's message: `what` names it in the error."""
    return validated(model, body, not_an_object=f"send the {what} as a JSON object", prefix=f"{what}: ",
                     describe=lambda path, error: _problem(path, error, model))
