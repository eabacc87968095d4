"""A user's API keys: list, create (the key is shown once), rename, delete."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from controlplane.accounts import store as accounts
from controlplane.accounts.auth import forget_secrets, require_user
from controlplane.errors import BadRequest, NotFound
from controlplane.http.fields import text_field
from controlplane.sessions.views import api_key_view
from controlplane.storage import db

bp = Blueprint("api_keys", __name__, url_prefix="/api/v1/api_keys")


@bp.get("")
@require_user
def list_keys():
    with db.transaction() as conn:
        return jsonify([api_key_view(r) for r in accounts.list_api_keys(conn, g.user["id"])])


@bp.post("")
@require_user
def create_key():
    form = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(form, dict):
        raise BadRequest("JSON body must be an object")
    name = text_field(form, "name", 200).strip() or "api key"
    with db.transaction() as conn:
        row, key = accounts.create_api_key(conn, g.user["id"], name)
    return jsonify(api_key_view(row, key)), 201


@bp.patch("")
@require_user
def rename_key():
    key_id = request.args.get("id") or ""
    if not key_id:
        raise BadRequest("name the key to rename: ?id=<key id>")
    form = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(form, dict):
        raise BadRequest("JSON body must be an object")
    name = text_field(form, "name", 200).strip()
    if not name:
        raise BadRequest("send the key's new name as 'name' (not empty)")
    with db.transaction() as conn:
        row = accounts.rename_api_key(conn, g.user["id"], key_id, name)
    if row is None:
        raise NotFound("API key not found")
    return jsonify(api_key_view(row))


@bp.delete("")
@require_user
def delete_key():
    target = request.args.get("key") or request.args.get("id") or ""
    if not target:
        raise BadRequest("name the key to delete: ?key=<key> or ?id=<key id>")
    with db.transaction() as conn:
        if not accounts.delete_api_key(conn, g.user["id"], target):
            raise NotFound("API key not found")
    forget_secrets()
    return jsonify(deleted=True)
