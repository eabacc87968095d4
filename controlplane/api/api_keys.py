"""A user's API keys: list, create (the key is shown once), check, rename, delete."""
from __future__ import annotations

from flask import Blueprint, g, jsonify, request
from pydantic import ConfigDict, Field

from controlplane.accounts import store as accounts
from controlplane.accounts.auth import forget_secrets, require_user
from controlplane.contract import helix_types as helix
from controlplane.contract.operations import documented
from controlplane.errors import BadRequest, NotFound
from controlplane.http.forms import Form, Text, read_form, request_fields
from controlplane.sessions.views import api_key_view
from controlplane.storage import db

bp = Blueprint("api_keys", __name__, url_prefix="/api/v1/api_keys")


class KeyName(Form):
    """POST and PATCH /api/v1/api_keys: the key's name, shown in its list (text only, as ever)."""

    model_config = ConfigDict(coerce_numbers_to_str=False)
    name: Text = Field("", max_length=200)


@bp.get("")
@require_user
@documented("The caller's API keys", responses={200: [helix.ApiKey]})
def list_keys():
    with db.transaction() as conn:
        return jsonify([api_key_view(r) for r in accounts.list_api_keys(conn, g.user["id"])])


@bp.post("")
@require_user
@documented("Create an API key (the key is shown once)", body=KeyName, query={"name": {"type": "string",
            "description": "the name, as Helix's client sends it: then the answer is the key alone, a JSON string"}},
            responses={201: (helix.ApiKey, {"type": "string"})})
def create_key():
    """The name comes in the body, or in the query string as Helix's client sends it; Helix's
    client (`?name=`) is answered as Helix did, with the key alone as a JSON string."""
    helix_client = "name" in request.args
    name = read_form(KeyName, request.args.to_dict() if helix_client else request_fields()).name.strip() or "api key"
    with db.transaction() as conn:
        row, key = accounts.create_api_key(conn, g.user["id"], name)
    return jsonify(key if helix_client else api_key_view(row, key)), 201


@bp.get("/check")
@require_user
@documented("Whether a key is one of the caller's", query={"key": {"type": "string"}},
            responses={200: (helix.ApiKey, None)})
def check_key():
    """Helix's check: the caller's key as an item, or null where it is not one of theirs (Helix
    said whose any key was; here nobody learns of another user's keys)."""
    key = request.args.get("key") or ""
    if not key:
        raise BadRequest("name the key to check: ?key=<key>")
    with db.transaction() as conn:
        row = accounts.own_api_key(conn, g.user["id"], key)
    return jsonify(api_key_view(row, key) if row else None)


@bp.patch("")
@require_user
@documented("Rename an API key", body=KeyName, query={"id": {"type": "string"}}, responses={200: helix.ApiKey})
def rename_key():
    key_id = request.args.get("id") or ""
    if not key_id:
        raise BadRequest("name the key to rename: ?id=<key id>")
    name = read_form(KeyName, request_fields()).name.strip()
    if not name:
        raise BadRequest("send the key's new name as 'name' (not empty)")
    with db.transaction() as conn:
        row = accounts.rename_api_key(conn, g.user["id"], key_id, name)
    if row is None:
        raise NotFound("API key not found")
    return jsonify(api_key_view(row))


@bp.delete("")
@require_user
@documented("Delete an API key", query={"key": {"type": "string"}, "id": {"type": "string"}})
def delete_key():
    target = request.args.get("key") or request.args.get("id") or ""
    if not target:
        raise BadRequest("name the key to delete: ?key=<key> or ?id=<key id>")
    with db.transaction() as conn:
        if not accounts.delete_api_key(conn, g.user["id"], target):
            raise NotFound("API key not found")
    forget_secrets()
    return jsonify(deleted=True)
