"""The OpenAPI 3.1 document of the API, built from the app's own routes and what each declared
(contract/operations.py): paths and methods from Flask's URL map, request and response schemas
from the pydantic models the routes parse with and answer in, the security schemes, and each
API's error shape. The web app's pages and assets are not API and are left out by blueprint."""
from __future__ import annotations

import re
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from controlplane.accounts.auth import QUERY_KEY_ENDPOINTS
from controlplane.contract import helix_types
from controlplane.contract.operations import BYTES, EVENTS, IMAGE_MODEL, JSON, TEXT_MODEL, Operation, operation_of
from controlplane.sessions.views import PLATFORM_VERSION

# Blueprints of the web app's pages and static files: HTML for browsers, not API.
PAGE_BLUEPRINTS = frozenset({"web", "sign_in", "account", "sessions_pages", "admin", "usage_page"})
# The tag of each blueprint's routes, in the order the reference shows them.
TAGS = {
    "sessions": "sessions", "helix_chat": "sessions", "finetune": "fine-tune review", "filestore": "filestore",
    "api_keys": "api keys", "usage": "usage", "dashboard": "dashboard", "server_info": "server",
    "user_socket": "sessions", "openai": "openai", "openai_finetuning": "openai", "reference": "server",
    "operations": "operations", "runner": "runner (internal)",
}
REF = "#/components/schemas/{model}"
_CONVERTER = re.compile(r"<(?:[a-z_]+:)?([a-zA-Z_][a-zA-Z0-9_]*)>")

ERROR_SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": True,
        "description": "The sessions API's error: what was wrong and what to change. Some name more"
                       " (a refused limit's `limit` and `code`, a plan's reset time).",
        "properties": {"error": {"type": "string"}, "code": {"type": "string"}, "limit": {"type": "string"}},
    },
    "OpenAIError": {
        "type": "object", "required": ["error"], "description": "An error under /v1, in OpenAI's shape.",
        "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
    },
}
RATE_LIMIT_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}} for name, text in {
        "Retry-After": "seconds to wait before trying again",
        "x-ratelimit-limit-requests": "requests allowed per minute by the plan",
        "x-ratelimit-remaining-requests": "requests left this minute",
        "x-ratelimit-reset-requests": "when the request count resets",
        "x-ratelimit-limit-tokens": "tokens allowed per minute by the plan",
        "x-ratelimit-remaining-tokens": "tokens left this minute",
        "x-ratelimit-reset-tokens": "when the token count resets",
    }.items()}
SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer",
               "description": "An API key: `Authorization: Bearer <key>` (`helix keys create`, or the Account page)."},
    "signInCookie": {"type": "apiKey", "in": "cookie", "name": "helix_session",
                     "description": "The web app's sign-in. A request that changes something sends the page's"
                                    " CSRF token too (`csrfToken`)."},
    "csrfToken": {"type": "apiKey", "in": "header", "name": "X-CSRFToken",
                  "description": "The signed-in page's CSRF token."},
    "accessToken": {"type": "apiKey", "in": "query", "name": "access_token",
                    "description": "An API key in the query, for the events stream, the file viewer and the"
                                   " user websocket (a browser's EventSource, img and WebSocket send no header)."},
    "runnerToken": {"type": "http", "scheme": "bearer", "description": "A runner's token (`helix runners token`)."},
}
# One event of a text/event-stream answer.
SERVER_SENT_EVENT = {"type": "object", "properties": {"event": {"type": "string"}, "data": {"type": "string"},
                                                      "id": {"type": "string"}, "retry": {"type": "integer"}}}


def documented_rules(app: Flask) -> list[Rule]:
    """The routes the document describes: every route but the web app's pages and assets."""
    return [rule for rule in app.url_map.iter_rules()
            if rule.endpoint != "static" and rule.endpoint.split(".")[0] not in PAGE_BLUEPRINTS]


def openapi_path(rule: Rule) -> str:
    return _CONVERTER.sub(r"{\1}", rule.rule)


def methods_of(rule: Rule) -> list[str]:
    return sorted(m.lower() for m in (rule.methods or set()) - {"HEAD", "OPTIONS"})


def _models(operations: list[Operation]) -> list[type[BaseModel]]:
    found: dict[type[BaseModel], None] = {}

    def add(value: Any) -> None:
        if isinstance(value, (tuple, list)):
            for item in value:
                add(item)
        elif isinstance(value, type) and issubclass(value, BaseModel):
            found[value] = None

    for op in operations:
        add(op.body)
        add(op.query)
        for value in op.responses.values():
            add(value)
    return list(found)


def _schema_of(value: Any, refs: dict[type[BaseModel], dict]) -> dict:
    """A model, a JSON Schema, None (any JSON object); a tuple: any one of them (None: null);
    a list of one: an array of it."""
    if isinstance(value, tuple):
        return {"anyOf": [{"type": "null"} if v is None else _schema_of(v, refs) for v in value]}
    if isinstance(value, list):
        return {"type": "array", "items": _schema_of(value[0], refs)}
    if isinstance(value, type) and issubclass(value, BaseModel):
        return refs[value]
    if isinstance(value, dict):
        return value
    return {"type": "object"}


def _query_parameters(query: Any, refs: dict, schemas: dict[str, dict]) -> list[dict]:
    """From the query's model, or from a mapping of parameter names to their JSON Schemas."""
    if query is None:
        return []
    schema = schemas[refs[query]["$ref"].rsplit("/", 1)[-1]] if isinstance(query, type) else {"properties": query}
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop,
             **({"description": prop["description"]} if "description" in prop else {})}
            for name, prop in schema.get("properties", {}).items()]


def _with_models(value: Any, models: dict[str, str]) -> Any:
    """An example with this installation's models in place of the stand-ins."""
    if isinstance(value, dict):
        return {key: _with_models(item, models) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_models(item, models) for item in value]
    return models.get(value, value) if isinstance(value, str) else value


def _request_body(op: Operation, refs: dict, models: dict[str, str]) -> dict | None:
    if op.body is None and not op.files:
        return None
    schema = _schema_of(op.body, refs) if op.body is not None else {"type": "object"}
    examples = {name: {"value": _with_models(value, models)} for name, value in op.examples.items()}
    content = {}
    for kind in op.body_types:
        if kind == "multipart/form-data" and op.files:
            files = {name: {"type": "array", "items": {"type": "string", "contentMediaType": BYTES}}
                     for name in op.files}
            content[kind] = {"schema": {"allOf": [schema, {"type": "object", "properties": files}]}}
        else:
            content[kind] = {"schema": schema}
        if examples:
            content[kind]["examples"] = examples
    return {"required": op.body is not None, "content": content}


def _responses(op: Operation, refs: dict, user_route: bool) -> dict:
    answers: dict[str, Any] = {}
    for status, value in op.responses.items():
        if isinstance(value, str):  # an answer with no body (a WebSocket upgrade)
            answers[str(status)] = {"description": value}
            continue
        body = {kind: {"schema": _schema_of(value, refs) if kind == JSON else SERVER_SENT_EVENT if kind == EVENTS
                       else {"type": "string", "contentMediaType": kind}}
                for kind in (op.content if isinstance(op.content, tuple) else (op.content,))}
        answers[str(status)] = {"description": op.summary if status < 300 else "", "content": body}
        if op.links and status < 300:
            answers[str(status)]["links"] = {name: {"operationId": target, "parameters": parameters}
                                             for name, (target, parameters) in op.links.items()}
    error = {JSON: {"schema": {"$ref": REF.format(model="OpenAIError" if op.errors == "openai" else "Error")}}}
    answers["4XX"] = {"description": "what was wrong with the request, and what to change", "content": error}
    if user_route:
        answers["429"] = {"description": "past a limit of the user's plan, or the fair share of a stream slot",
                          "headers": RATE_LIMIT_HEADERS, "content": error}
    return answers


def _security(op: Operation, endpoint: str, method: str) -> list[dict]:
    if op.auth == "public":
        return []
    if op.auth == "runner":
        return [{"runnerToken": []}]
    cookie = {"signInCookie": []} if method == "get" else {"signInCookie": [], "csrfToken": []}
    return [{"apiKey": []}, cookie] + ([{"accessToken": []}] if endpoint in QUERY_KEY_ENDPOINTS else [])


def build(app: Flask) -> dict[str, Any]:
    """The document for this app. Routes that declared nothing are listed under
    `x-undocumented` (the suite fails on any)."""
    config = app.config["HELIX"]
    served = {TEXT_MODEL: next(iter(config.text_models), ""), IMAGE_MODEL: next(iter(config.image_models), "")}
    rules = documented_rules(app)
    declared = {rule.endpoint: operation_of(app.view_functions[rule.endpoint]) for rule in rules}
    operations = [op for op in declared.values() if op is not None]
    models = list(dict.fromkeys([*_models(operations), *helix_types.WIRE_TYPES]))
    keyed, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    refs = {model: schema for (model, _), schema in keyed.items()}
    schemas = {**top.get("$defs", {}), **ERROR_SCHEMAS}
    paths: dict[str, dict] = {}
    undocumented: list[str] = []
    used_ids: set[str] = set()
    for rule in sorted(rules, key=lambda r: r.rule):
        op = declared[rule.endpoint]
        if op is None:
            undocumented.append(f"{','.join(methods_of(rule)).upper()} {rule.rule} ({rule.endpoint})")
            continue
        path = openapi_path(rule)
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in _CONVERTER.findall(rule.rule)]
        tag = TAGS.get(rule.endpoint.split(".")[0], "operations")
        for method in methods_of(rule):
            operation_id = re.sub(r"\W", "_", rule.endpoint)
            if operation_id in used_ids:
                operation_id = f"{operation_id}_{method}"
            used_ids.add(operation_id)
            item: dict[str, Any] = {
                "operationId": operation_id, "summary": op.summary, "tags": [tag],
                "parameters": parameters + _query_parameters(op.query, refs, schemas),
                "responses": _responses(op, refs, op.auth == "user"),
                "security": _security(op, rule.endpoint, method),
            }
            if op.description:
                item["description"] = op.description
            body = _request_body(op, refs, served)
            if body is not None and method in ("post", "put", "patch"):
                item["requestBody"] = body
            if op.auth == "runner":
                item["x-internal"] = True
            paths.setdefault(path, {})[method] = item
    document = {
        "openapi": "3.1.0",
        "info": {"title": "Helix-compatible GenAI platform API", "version": PLATFORM_VERSION,
                 "description": "The Helix sessions API, the OpenAI-compatible /v1 API and the runner routes"
                                " (internal), as this server serves them."},
        "servers": [{"url": "/"}],
        "tags": [{"name": name} for name in dict.fromkeys(TAGS.values())],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }
    if undocumented:
        document["x-undocumented"] = undocumented
    return document
