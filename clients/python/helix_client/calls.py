"""The API's requests, built once for both clients (client.py sends them, sync or async)."""
from __future__ import annotations

import io
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# on_upload(bytes sent, bytes in all): an upload's progress, as httpx reads the files to send.
UploadProgress = Callable[[int, int], None]

SESSIONS = "/api/v1/sessions"


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None
    json: Any = None
    files: list[tuple[str, tuple[str, Any, str]]] | None = None
    raw: bool = False  # the answer's bytes, not its JSON


def _fields(**values: Any) -> dict[str, str]:
    """Form fields as the API reads them: absent when None, yes/no for booleans."""
    return {k: ("yes" if v else "no") if isinstance(v, bool) else str(v) for k, v in values.items() if v is not None}


class _Counted(io.BytesIO):
    """A file's bytes that report how much of the whole upload has been read (httpx reads a
    multipart file in chunks, from its start again on a retry)."""

    def __init__(self, data: bytes, sent: dict[str, int], name: str, total: int, on_upload: UploadProgress):
        super().__init__(data)
        self._sent, self._name, self._total, self._on_upload = sent, name, total, on_upload

    def seek(self, offset: int, whence: int = 0) -> int:
        position = super().seek(offset, whence)
        self._sent[self._name] = position
        return position

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self._sent[self._name] = self.tell()
        self._on_upload(sum(self._sent.values()), self._total)
        return chunk


def _files(paths: list[str | Path], field_name: str,
           on_upload: UploadProgress | None = None) -> list[tuple[str, tuple[str, Any, str]]]:
    contents = [(path.name, path.read_bytes()) for path in map(Path, paths)]
    total, sent = sum(len(data) for _, data in contents), {}
    files = []
    for n, (name, data) in enumerate(contents):
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        body = _Counted(data, sent, f"{n}:{name}", total, on_upload) if on_upload else data
        files.append((field_name, (name, body, kind)))
    return files


def create_session(input: str = "", *, mode: str = "inference", type: str = "text", files=(),
                   on_upload: UploadProgress | None = None, **options: Any) -> Call:
    """A chat or image session from `input`, or a fine-tune of `files` (Helix's form);
    `on_upload(sent, total)` as the files go up."""
    data = _fields(input=input or None, mode=mode, type=type, **options)
    return Call("POST", SESSIONS, data=data, files=_files(list(files), "files", on_upload) or None)


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
