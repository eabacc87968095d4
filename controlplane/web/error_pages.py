"""Errors on the web app's pages answer with an HTML page that says what went wrong; the API's
routes keep their JSON errors. A request is the API's when its path is under an API prefix."""
from __future__ import annotations

from flask import render_template, request

API_PREFIXES = ("/api/", "/v1/", "/healthz", "/metrics")

TITLES = {400: "That request was not right", 401: "Please sign in", 403: "Not allowed",
          404: "Not found", 405: "Not allowed here", 409: "Not now", 413: "Too large",
          429: "Too many requests", 500: "Something broke", 503: "The service is unavailable"}


def is_page_request() -> bool:
    path = request.path
    return not (path.startswith(API_PREFIXES) or path in ("/api", "/v1"))


def error_page(message: str, status: int):
    title = TITLES.get(status, "Something went wrong")
    return render_template("error.html", title=title, message=message, status=status), status
