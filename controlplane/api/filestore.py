"""Helix's filestore routes, confined to the caller's own root. Paths are relative to that root
(Helix's `user_prefix` is so empty); its `sessions/` folder, where sessions keep their documents
and outputs, is read only here, as Helix's filestore config says: a session's files go with it."""
from __future__ import annotations

import mimetypes

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for

from controlplane.accounts.auth import require_user
from controlplane.contract import helix_types as helix
from controlplane.contract.operations import BYTES, documented
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.sessions import sharing
from controlplane.sessions import store as sessions_store
from controlplane.storage import db
from controlplane.storage.filestore import FileInfo, UserFiles, user_path
from controlplane.usage import storage_quota

bp = Blueprint("filestore", __name__, url_prefix="/api/v1/filestore")
# The query parameter most routes here take.
PATH = {"path": {"type": "string", "description": "relative to the caller's root"}}
READ_ONLY_FOLDERS = ("sessions",)


def _files() -> UserFiles:
    return UserFiles(current_app.extensions["filestore"], g.user["id"])


def _readable_files(path: str) -> UserFiles:
    """Where `path` is read from: the caller's own root, or, for a file of another user's session
    that the caller may read (shared, or the caller an admin: sessions/sharing.py), its owner's."""
    parts = path.split("/")
    if len(parts) > 2 and parts[0] == "sessions":
        with db.read() as conn:
            session = sessions_store.get_session_any_owner(conn, parts[1])
        if session is not None and session.owner != g.user["id"] and sharing.may_read(g.user, session):
            return UserFiles(current_app.extensions["filestore"], session.owner)
    return _files()


def _path(raw: str | None, allow_root: bool = True) -> str:
    return user_path(raw, max_name_bytes=current_app.config["HELIX"].max_name_bytes, allow_root=allow_root)


def _writable(*paths: str) -> None:
    for path in paths:
        top = path.split("/", 1)[0]
        if top in READ_ONLY_FOLDERS:
            raise BadRequest(f"'{top}/' holds your sessions' documents and outputs and is read only here:"
                             " delete the session to remove its files")


def file_view(files: UserFiles, info: FileInfo) -> dict:
    """Helix's FileStoreItem: `created` in Unix seconds, `url` where the file is read (the key goes
    with it, as a header or `?access_token=`); a folder's `url` is empty."""
    info = files.relative(info)
    return {"name": info.name, "path": info.path, "directory": info.directory, "size": info.size,
            "created": int(info.created.timestamp()) if info.created else 0,
            "url": "" if info.directory else url_for("filestore.viewer", path=info.path, _external=True)}


@bp.get("/config")
@require_user
@documented("Where the caller's files are, and which folders are read-only", responses={200: helix.FilestoreConfig})
def filestore_config():
    """Helix's FilestoreConfig: paths here are relative to the caller's root already."""
    return jsonify(user_prefix="", folders=[{"name": name, "readonly": True} for name in READ_ONLY_FOLDERS])


@bp.get("/list")
@require_user
@documented("The files and folders in a folder", query=PATH, responses={200: [helix.FileStoreItem]})
def list_files():
    files = _files()
    path = _path(request.args.get("path"))
    return jsonify([file_view(files, i) for i in files.list(path)])


@bp.get("/get")
@require_user
@documented("One file's or folder's details", query=PATH, responses={200: helix.FileStoreItem})
def get_file():
    path = _path(request.args.get("path"), allow_root=False)
    files = _readable_files(path)
    return jsonify(file_view(files, files.stat(path)))


@bp.get("/viewer/<path:path>")
@require_user
@documented("A file's bytes (sandboxed: it never runs as a page)", content=BYTES)
def viewer(path: str):
    path = _path(path, allow_root=False)
    files = _readable_files(path)
    info = files.stat(path)
    if info.directory:
        raise BadRequest("path is a folder")
    body = files.open(path)
    mimetype = mimetypes.guess_type(info.name)[0] or "application/octet-stream"
    # A user's HTML or SVG must never run as a page of this origin: a sandboxed, script-free view.
    return Response(body, mimetype=mimetype, headers={"Content-Length": str(info.size),
                                                      "X-Content-Type-Options": "nosniff",
                                                      "Content-Security-Policy": "default-src 'none'; sandbox"},
                    direct_passthrough=True)


@bp.post("/upload")
@require_user
@documented("Upload files into a folder (replacing files of the same name)", query=PATH,
            body_types=("multipart/form-data",), files=("files",), responses={201: [helix.FileStoreItem]})
def upload():
    files = _files()
    folder = _path(request.args.get("path"))
    uploads = [f for f in request.files.getlist("files") if f.filename]
    if not uploads:
        raise BadRequest("send one or more files in the multipart field 'files'")
    storage_quota.check_storage(current_app.extensions["filestore"])
    targets = []
    for upload in uploads:  # every name is checked before any file is written: a refusal stores nothing
        name = _path(upload.filename, allow_root=False)
        if "/" in name:
            raise BadRequest("file names must not contain '/'")
        targets.append(f"{folder}/{name}" if folder else name)
    _writable(*targets)
    new = _check_targets(files, folder, targets)
    saved, written = [], []
    try:
        for upload, target in zip(uploads, targets):
            saved.append(file_view(files, files.write(target, upload.stream)))
            written.append(target)
    except BaseException:
        # A write that still fails (a body cut short, a folder made meanwhile) takes back the
        # files this request created; one it replaced cannot be given back.
        for target in written:
            if target in new:
                try:
                    files.delete(target)
                except Exception:
                    pass  # gone already: nothing to take back
        raise
    return jsonify(saved), 201


def _check_targets(files: UserFiles, folder: str, targets: list[str]) -> set[str]:
    """Refuses an upload any of whose files could not be written (a folder in a file's place, a
    file in the folder's), before any is: a refused request stores nothing. Returns the targets
    that do not exist yet."""
    parts = folder.split("/") if folder else []
    for n in range(1, len(parts) + 1):
        info = _stat(files, "/".join(parts[:n]))
        if info is None:
            break  # nothing further down exists either
        if not info.directory:
            raise Conflict(f"a file stands where a folder of this path should be: {'/'.join(parts[:n])}")
    new = set()
    for target in targets:
        info = _stat(files, target)
        if info is None:
            new.add(target)
        elif info.directory:
            raise Conflict(f"a folder with that name exists: {target}")
    return new


def _stat(files: UserFiles, path: str) -> FileInfo | None:
    try:
        return files.stat(path)
    except NotFound:
        return None


@bp.post("/folder")
@require_user
@documented("Create a folder", query=PATH, responses={201: helix.FileStoreItem})
def folder():
    files = _files()
    path = _path(request.args.get("path"), allow_root=False)
    _writable(path)
    return jsonify(file_view(files, files.mkdir(path))), 201


@bp.put("/rename")
@require_user
@documented("Rename or move a file or folder", query={"path": {"type": "string"}, "new_path": {"type": "string"}},
            responses={200: helix.FileStoreItem})
def rename():
    files = _files()
    path = _path(request.args.get("path"), allow_root=False)
    new_path = _path(request.args.get("new_path"), allow_root=False)
    _writable(path, new_path)
    if new_path == path or new_path.startswith(path + "/"):
        raise BadRequest("new_path must not be the path itself or inside it")
    return jsonify(file_view(files, files.rename(path, new_path)))


@bp.delete("/delete")
@require_user
@documented("Delete a file or folder", query=PATH,
            responses={200: {"type": "object", "properties": {"deleted": {"type": "string"}}}})
def delete():
    files = _files()
    path = _path(request.args.get("path"), allow_root=False)
    _writable(path)
    files.delete(path)
    return jsonify(deleted=path)
