"""The API's reference: its OpenAPI 3.1 document (built once per process from the routes,
contract/openapi.py) and a page that renders it with Swagger UI, whose files come from the
swagger-ui-py package (no CDN)."""
from __future__ import annotations

from pathlib import Path

import swagger_ui
from flask import Blueprint, current_app, jsonify, render_template, send_from_directory

from controlplane.contract import openapi
from controlplane.contract.operations import documented
from controlplane.errors import NotFound

bp = Blueprint("reference", __name__)
SWAGGER_UI_FILES = Path(swagger_ui.__file__).parent / "static"
DOCS_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css"})
# The page runs this origin's scripts only; Swagger UI sets styles inline and shows data: images.
DOCS_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
               " connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@bp.get("/api/v1/openapi.json")
@documented("This API's OpenAPI 3.1 document", auth="public")
def openapi_document():
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = openapi.build(current_app)
    return jsonify(current_app.extensions["openapi"])


@bp.get("/api/docs")
@documented("The API's reference page (HTML), rendered from the OpenAPI document", auth="public",
            content="text/html")
def docs_page():
    response = current_app.make_response(render_template("api_docs.html"))
    response.headers.update({"Content-Security-Policy": DOCS_POLICY, "X-Content-Type-Options": "nosniff"})
    return response


@bp.get("/api/docs/assets/<name>")
@documented("The reference page's script and styles (Swagger UI)", auth="public", content="text/plain")
def docs_asset(name: str):
    if name not in DOCS_ASSETS:
        raise NotFound(f"no such file: the reference page uses {', '.join(sorted(DOCS_ASSETS))}")
    return send_from_directory(SWAGGER_UI_FILES, name, max_age=3600)
