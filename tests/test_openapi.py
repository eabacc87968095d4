"""The API as a contract: the OpenAPI 3.1 document built from the routes is valid, names every
route the app serves and the README's tables list (and nothing else), takes its request schemas
from the models the routes parse with, declares who may call each route as the routes behave,
and renders as a reference page in a real browser from the package's own files."""
from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from controlplane.contract.client_types import render
from controlplane.contract.openapi import PAGE_BLUEPRINTS, documented_rules, methods_of, openapi_path
from controlplane.openai.input import ChatCompletionBody
from controlplane.sessions.input import NewSession
from tests.browser import browser, screenshot  # noqa: F401 (a fixture)
from tests.conftest import REPO


@pytest.fixture(scope="module")
def document(app):
    r = app.test_client().get("/api/v1/openapi.json")
    assert r.status_code == 200 and r.is_json
    return r.get_json()


def _shape(path: str) -> str:
    """A path with its parameters unnamed: /api/v1/sessions/{}/cancel."""
    return re.sub(r"\{[^}]*\}|<[^>]*>", "{}", path)


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)
    assert document["openapi"] == "3.1.0"
    assert "x-undocumented" not in document, document.get("x-undocumented")


def test_it_names_every_route_the_app_serves_and_no_other(app, document):
    served = {(method, openapi_path(rule)) for rule in documented_rules(app) for method in methods_of(rule)}
    named = {(method, path) for path, item in document["paths"].items() for method in item}
    assert named == served
    # What it leaves out is the web app's pages and assets, all of them HTML or files for browsers.
    left_out = {rule.endpoint.split(".")[0] for rule in app.url_map.iter_rules()} - \
        {rule.endpoint.split(".")[0] for rule in documented_rules(app)}
    assert left_out <= PAGE_BLUEPRINTS | {"static"}, left_out
    assert len(served) > 60


def test_it_names_every_route_of_the_readmes_tables(document):
    named = {(method.upper(), _shape(path)) for path, item in document["paths"].items() for method in item}
    listed = set()
    for cell in re.findall(r"`((?:GET|POST|PUT|PATCH|DELETE)(?:/(?:GET|POST|PUT|PATCH|DELETE))* /[^`?]*)",
                           (REPO / "README.md").read_text()):
        methods, path = cell.split(" ", 1)
        listed |= {(m, _shape(path.rstrip("/") or "/")) for m in methods.split("/")}
    assert len(listed) > 30
    assert listed <= named, sorted(listed - named)


def test_request_schemas_come_from_the_models_the_routes_parse_with(document):
    schemas = document["components"]["schemas"]
    create = document["paths"]["/api/v1/sessions"]["post"]["requestBody"]["content"]
    assert set(create) == {"application/x-www-form-urlencoded", "multipart/form-data", "application/json"}
    refs = [s["$ref"].rsplit("/", 1)[-1] for s in create["application/json"]["schema"]["anyOf"]]
    assert refs == ["NewSession", "TextFinetuneForm", "ImageFinetuneForm"]
    assert set(schemas["NewSession"]["properties"]) == set(NewSession.model_fields)
    # A limit of the model is the document's: max_tokens 1..8192.
    tokens = schemas["NewSession"]["properties"]["max_tokens"]
    assert 8192 in re.findall(r"\d+", str(tokens)) or "8192" in str(tokens)
    files = create["multipart/form-data"]["schema"]["allOf"][1]["properties"]["files"]
    assert files["type"] == "array"
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert list(chat["requestBody"]["content"]) == ["application/json"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionBody"}
    assert set(schemas["ChatCompletionBody"]["required"]) == {n for n, f in ChatCompletionBody.model_fields.items()
                                                              if f.is_required()}
    # Answers: Helix's own types for the sessions API, each API's own error shape.
    assert document["paths"]["/api/v1/sessions/{session_id}"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"] == {"$ref": "#/components/schemas/Session"}
    assert chat["responses"]["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    assert "Retry-After" in chat["responses"]["429"]["headers"]


def _example_path(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "x", path)


def test_who_may_call_each_route_is_as_the_document_says(app, document):
    client = app.test_client()
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            schemes = {name for requirement in operation["security"] for name in requirement}
            if "runnerToken" in schemes or "apiKey" in schemes:
                # The user websocket's route matches only an upgrade.
                upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"} if "101" in operation["responses"] else {}
                r = client.open(_example_path(path), method=method.upper(), headers=upgrade)
                assert r.status_code == 401, (method, path, r.status_code)
                checked += 1
            elif method == "get" and "{" not in path:
                r = client.get(path)
                assert r.status_code == 200, (path, r.status_code)
                checked += 1
    assert checked > 60


def test_the_reference_page_renders_the_document_from_the_packages_own_files(live_server, browser):  # noqa: F811
    page = browser.new_page()
    asked, problems = [], []
    page.on("request", lambda request: asked.append(request.url))
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("response", lambda response: response.status >= 400 and problems.append(response.url))
    page.goto(f"{live_server}/api/docs")
    page.wait_for_selector('[data-path="/api/v1/sessions/{session_id}/cancel"]', timeout=30_000)
    assert page.locator(".opblock").count() > 60
    screenshot(page, "api-reference")
    assert problems == [], problems  # nothing the page's policy refused
    assert asked and all(url.startswith(live_server) for url in asked), asked  # no CDN
    page.close()


def test_a_method_a_route_does_not_take_is_a_405_naming_those_it_does(app, user):
    client = app.test_client()
    r = client.open("/api/v1/sessions", method="TRACE", headers=user.headers)
    assert r.status_code == 405 and r.get_json() == {"error": "method not allowed on this route"}
    assert set(r.headers["Allow"].split(", ")) == {"GET", "POST", "HEAD", "OPTIONS"}
    # Helix's chat route is not a session id: its Allow names its own methods alone.
    r = client.options("/api/v1/sessions/chat", headers=user.headers)
    assert set(r.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    r = client.get("/api/v1/sessions/chat", headers=user.headers)
    assert r.status_code == 405 and r.headers["Allow"]


def test_every_link_leads_to_an_operation_of_the_document(document):
    ids = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    links = [link for item in document["paths"].values() for op in item.values()
             for answer in op["responses"].values() for link in answer.get("links", {}).values()]
    assert len(links) >= 9 and all(link["operationId"] in ids for link in links), links


def test_the_python_clients_types_are_written_from_the_document(document):
    """The client's typed answers are the document's schemas: a change to one without the other fails."""
    written = (REPO / "clients" / "python" / "helix_client" / "types.py").read_text()
    assert written == render(document), "run: python -m controlplane.contract.client_types > " \
                                        "clients/python/helix_client/types.py"
    assert "class Session(TypedDict):" in written and "class WebsocketEvent(TypedDict):" in written


def test_every_example_works_as_it_is_on_this_installation(live_server, runner, live_user):
    """The reference page offers the examples and the fuzzer builds on what they create: each one,
    sent as the document shows it (models filled in), is answered with success, in the shape the
    document gives that answer."""
    import requests
    from jsonschema import Draft202012Validator

    from tests.conftest import IMAGE_MODEL, TEXT_MODEL, wait_for_session

    document = requests.get(f"{live_server}/api/v1/openapi.json", timeout=30).json()
    sent = []
    created = None
    # Session creation first: the routes of one session take the id it answers with.
    for path, item in sorted(document["paths"].items(), key=lambda kv: kv[0] != "/api/v1/sessions"):
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {})
            kind = "application/json" if "application/json" in content else next(iter(content), None)
            for name, example in (content.get(kind, {}).get("examples") or {}).items():
                body = example["value"]
                assert "{text_model}" not in str(body) and "{image_model}" not in str(body)
                url = live_server + path.replace("{session_id}", created or "-")
                r = requests.request(method, url, headers=live_user.headers, timeout=120,
                                     **({"json": body} if kind == "application/json" else {"data": body}))
                assert r.status_code < 300, (method, path, name, r.status_code, r.text[:300])
                schema = op["responses"][str(r.status_code)]["content"]["application/json"]["schema"]
                Draft202012Validator({**schema, "components": document["components"]}).validate(r.json())
                if path == "/api/v1/sessions" and name == "chat":
                    created = r.json()["id"]
                    assert r.json()["model_name"] == TEXT_MODEL
                    wait_for_session(live_server, live_user, created)  # its turn ends before the next
                sent.append((method, path, name))
    assert {("post", "/api/v1/sessions", "image"), ("put", "/api/v1/sessions/{session_id}", "next prompt"),
            ("post", "/v1/chat/completions", "chat"), ("post", "/v1/images/generations", "image")} <= set(sent)
    assert IMAGE_MODEL in str(document["paths"]["/v1/images/generations"]["post"]["requestBody"])
