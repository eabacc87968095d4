"""What a route reads and answers, declared where the route is (`@documented(...)`), so the
OpenAPI document (contract/openapi.py) is built from the same models the route parses with and
a route that declares nothing is found by the suite."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Auth = Literal["user", "runner", "public"]
Errors = Literal["helix", "openai"]
JSON = "application/json"
FORM = ("application/x-www-form-urlencoded", "multipart/form-data", JSON)
EVENTS = "text/event-stream"
BYTES = "application/octet-stream"
# Stand-ins, in an operation's examples, for the models this installation serves: the document
# (contract/openapi.py) fills in the first of each, so an example sent as it is works here.
TEXT_MODEL, IMAGE_MODEL = "{text_model}", "{image_model}"


@dataclass(frozen=True)
class Operation:
    """One route's contract.

    `body`: the model (or a tuple of models, one of which applies) the route reads its body with;
    `body_types`: the content types it accepts it in (form fields or JSON by default); `files`:
    multipart file fields it takes besides. `query`: the model of its query string, or its
    parameters' names and JSON Schemas (all optional). `responses`:
    status to the model of the answer, a JSON Schema, None for any JSON object, a tuple for any
    one of several (None there: null) or a list of one for an array of it; `content`: the
    success answer's content type (a tuple: one of those). `auth`: who may call it. `errors`: the shape of its errors
    (Helix's `{"error": "..."}` or OpenAI's). `links`: what the success answer leads to, by name:
    another operation's id and its parameters as OpenAPI runtime expressions (clients and the
    fuzzer's stateful phase follow them). `examples`: request bodies that work as they are, by
    name (the reference page offers them; the fuzzer sends them and builds on what they create)."""

    summary: str
    body: Any = None
    body_types: tuple[str, ...] = FORM
    files: tuple[str, ...] = ()
    query: Any = None
    responses: dict[int, Any] = field(default_factory=lambda: {200: None})
    content: str | tuple[str, ...] = JSON
    auth: Auth = "user"
    errors: Errors = "helix"
    description: str = ""
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)


def documented(summary: str, **details: Any) -> Callable:
    """Declares the route's contract (see `Operation`); changes nothing in how it runs."""
    operation = Operation(summary, **details)

    def mark(view: Callable) -> Callable:
        view.operation = operation  # type: ignore[attr-defined]
        return view

    return mark


def operation_of(view: Callable) -> Operation | None:
    """The contract a view declared, through the decorators around it (functools.wraps keeps it)."""
    while view is not None:
        found = getattr(view, "operation", None)
        if isinstance(found, Operation):
            return found
        view = getattr(view, "__wrapped__", None)
    return None
