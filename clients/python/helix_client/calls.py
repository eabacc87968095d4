"""The API's requests, built once for both clients (client.py sends them, sync or async)."""
from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SESSIONS = "/api/v1/sessions"


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    json: Any = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    raw: bool = False  # the answer's bytes, not its JSON


def _fields(**values: Any) -> dict[str, str]:
    """Form fields as the API reads them: absent when None, yes/no for booleans."""
    return {k: ("yes" if v else "no") if isinstance(v, bool) else str(v) for k, v in values.items() if v is not None}


def _files(paths: list[str | Path], field_name: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = []
    for path in map(Path, paths):
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append((field_name, (path.name, path.read_bytes(), kind)))
    return files


def create_session(input: str = "", *, mode: str = "inference", type: str = "text", files=(), **options: Any) -> Call:
    """A chat or image session from `input`, or a fine-tune of `files` (Helix's form)."""
    data = _fields(input=input or None, mode=mode, type=type, **options)
    return Call("POST", SESSIONS, data=data, files=_files(list(files), "files") or None)


def continue_session(session_id: str, input: str, **options: Any) -> Call:
    return Call("PUT", f"{SESSIONS}/{session_id}", data=_fields(input=input, **options))


def get_session(session_id: str) -> Call:
    return Call("GET", f"{SESSIONS}/{session_id}")


def list_sessions(limit: int = 50, offset: int = 0, q: str = "") -> Call:
    return Call("GET", SESSIONS, params={"limit": limit, "offset": offset, **({"q": q} if q else {})})


def session_action(session_id: str, action: str) -> Call:
    """cancel (POST), restart (PUT) or delete."""
    if action == "delete":
        return Call("DELETE", f"{SESSIONS}/{session_id}")
    return Call("POST" if action == "cancel" else "PUT", f"{SESSIONS}/{session_id}/{action}")


def events(session_id: str) -> Call:
    return Call("GET", f"{SESSIONS}/{session_id}/events")


def list_files(path: str = "") -> Call:
    return Call("GET", "/api/v1/filestore/list", params={"path": path})


def upload_files(folder: str, paths: list[str | Path]) -> Call:
    return Call("POST", "/api/v1/filestore/upload", params={"path": folder}, files=_files(paths, "files"))


def download_file(path: str) -> Call:
    return Call("GET", f"/api/v1/filestore/viewer/{path.lstrip('/')}", raw=True)


def usage(**period: str) -> Call:
    return Call("GET", "/api/v1/usage", params={k: v for k, v in period.items() if v})
