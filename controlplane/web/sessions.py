"""The sessions pages: the list (search, paging), a new session (chat, image, text and image
fine-tunes), and one session's page, which its script fills from the sessions API and its
events stream."""
from __future__ import annotations

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from controlplane.errors import NotFound
from controlplane.http.fields import optional_int, text_field
from controlplane.sessions import store as sessions_store
from controlplane.storage import db
from controlplane.web.sign_in import signed_in_page

bp = Blueprint("sessions_pages", __name__)
PAGE_SIZE = 20


@bp.get("/")
def home():
    return redirect(url_for("sessions_pages.list_sessions"))


@bp.get("/sessions")
@signed_in_page
def list_sessions():
    search = text_field(request.args, "q", 200).strip()
    page = optional_int(request.args, "page", 1, 10**6) or 1
    with db.transaction() as conn:
        rows, total = sessions_store.list_sessions(conn, g.user["id"], (page - 1) * PAGE_SIZE, PAGE_SIZE, search)
    pages = max(1, -(-total // PAGE_SIZE))
    return render_template("sessions.html", sessions=rows, total=total, search=search, page=page, pages=pages)


@bp.get("/sessions/new")
@signed_in_page
def new_session():
    config = current_app.config["HELIX"]
    kind = request.args.get("kind", "chat")
    if kind not in ("chat", "image", "text-finetune", "image-finetune"):
        kind = "chat"
    return render_template("new_session.html", kind=kind, text_models=config.text_models,
                           image_models=config.image_models, max_upload_bytes=config.max_upload_bytes)


@bp.get("/sessions/<session_id>")
@signed_in_page
def session_page(session_id: str):
    with db.transaction() as conn:
        row = sessions_store.get_session(conn, session_id, g.user["id"])
    if row is None:  # another user's session looks exactly like one that does not exist
        raise NotFound("There is no session of yours at this address.")
    return render_template("session.html", session=row)
