"""The filestore: users' files and generated outputs, behind one interface.

A local directory by default, an S3-compatible bucket by configuration. Each user sees only
the tree under their own root; `user_path` is the single place a user-supplied path is
checked, so traversal (`..`), absolute paths, NUL bytes and backslashes never reach storage.
Runners never hold filestore credentials: they move files through the control plane.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator, Protocol

from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.http.fields import ensure_utf8


@dataclass
class FileInfo:
    path: str          # relative to the user's root
    name: str
    directory: bool
    size: int
    created: datetime | None


# S3 keys are at most 1024 bytes; a local path of this length stays far under PATH_MAX.
MAX_PATH_BYTES = 1024


def user_path(raw: str | None, *, max_name_bytes: int, allow_root: bool = True) -> str:
    """Normalises a user-supplied path inside their root, or answers 400 saying why not.

    Lengths are counted in UTF-8 bytes, as filesystems and S3 count them: 100 × "文" is 100
    characters but 300 bytes, more than a file name may hold (255 bytes on most filesystems)."""
    raw = ensure_utf8(raw or "", "path")
    if "\x00" in raw:
        raise BadRequest("path must not contain NUL bytes")
    if "\\" in raw:
        raise BadRequest("path must use '/' as separator")
    if raw.startswith("/") and raw.strip("/"):
        raise BadRequest("path must be relative to your filestore root (no leading '/')")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BadRequest("path must not contain '..'")
    for part in parts:
        if len(part.encode()) > max_name_bytes:
            raise BadRequest(f"path holds a name of {len(part.encode())} bytes ({part[:20]!r}…): "
                             f"a file or folder name may be at most {max_name_bytes} bytes (UTF-8)")
    if len(raw.encode()) > MAX_PATH_BYTES:
        raise BadRequest(f"path is too long: at most {MAX_PATH_BYTES} bytes (UTF-8)")
    if not parts and not allow_root:
        raise BadRequest("path is required")
    return "/".join(parts)


class Filestore(Protocol):
    def write(self, key: str, data: BinaryIO) -> FileInfo: ...
    def open(self, key: str) -> BinaryIO: ...
    def stat(self, key: str) -> FileInfo: ...
    def list(self, key: str) -> list[FileInfo]: ...
    def mkdir(self, key: str) -> FileInfo: ...
    def rename(self, key: str, new_key: str) -> FileInfo: ...
    def delete(self, key: str) -> None: ...
    def used_bytes(self, key: str) -> int: ...


class LocalFilestore:
    """Files under one directory; keys are 'users/<id>/<user path>'."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = self.root.resolve()

    def _path(self, key: str) -> Path:
        path = self.root / key
        # Refuse symlink tricks: whatever exists on the way must resolve inside the root.
        real = path.resolve()
        if real != self._real_root and self._real_root not in real.parents:
            raise BadRequest("path leaves your filestore root")
        probe = path
        while probe != self.root:
            if probe.is_symlink():
                raise BadRequest("path goes through a symbolic link")
            probe = probe.parent
        return path

    def _info(self, key: str, path: Path) -> FileInfo:
        st = path.stat()
        return FileInfo(path=key, name=path.name, directory=path.is_dir(),
                        size=0 if path.is_dir() else st.st_size,
                        created=datetime.fromtimestamp(st.st_mtime, timezone.utc))

    def _make_parents(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Conflict("a file stands where a folder of this path should be") from None

    def write(self, key: str, data: BinaryIO) -> FileInfo:
        path = self._path(key)
        if path.is_dir():
            raise Conflict("a folder with that name exists")
        self._make_parents(path)
        # Readers never see half a file: it is written aside, then renamed into place. The name
        # aside is unique per upload (two uploads of one name at once must not share it) and
        # short whatever the file's name (which may already be as long as a name can be).
        tmp = path.with_name(f".{uuid.uuid4().hex}.uploading")
        try:
            with open(tmp, "xb") as out:
                shutil.copyfileobj(data, out, 1024 * 1024)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a refused or broken upload leaves nothing behind
            raise
        return self._info(key, path)

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        if not path.is_file():
            raise NotFound("file not found")
        return open(path, "rb")

    def stat(self, key: str) -> FileInfo:
        path = self._path(key)
        if not path.exists():
            raise NotFound("file not found")
        return self._info(key, path)

    def list(self, key: str) -> list[FileInfo]:
        path = self._path(key)
        if not path.exists():
            return []
        if not path.is_dir():
            raise BadRequest("path is a file, not a folder")
        return [self._info(f"{key}/{child.name}", child) for child in sorted(path.iterdir())
                if not child.name.startswith(".") and not child.is_symlink()]

    def mkdir(self, key: str) -> FileInfo:
        path = self._path(key)
        if path.is_file():
            raise Conflict("a file with that name exists")
        self._make_parents(path)
        path.mkdir(exist_ok=True)
        return self._info(key, path)

    def rename(self, key: str, new_key: str) -> FileInfo:
        src, dst = self._path(key), self._path(new_key)
        if not src.exists():
            raise NotFound("file not found")
        if dst.exists():
            raise Conflict("something already exists at the new path")
        self._make_parents(dst)
        os.replace(src, dst)
        return self._info(new_key, dst)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            raise NotFound("file not found")

    def used_bytes(self, key: str) -> int:
        """The size of every file under `key` (0 when there is nothing there)."""
        top = self.root / key
        if not top.is_dir():
            return 0
        return sum(entry.stat().st_size for entry in top.rglob("*") if entry.is_file() and not entry.is_symlink())


class S3Filestore:
    """The same interface on an S3-compatible bucket (AWS, MinIO, R2…); folders are key prefixes."""

    def __init__(self, url: str, endpoint_url: str = ""):
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url or None)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _missing(self, err: Exception) -> bool:
        code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NotFound")

    def _head(self, key: str) -> dict | None:
        """The object's metadata, or None where no object has that key."""
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as err:
            if self._missing(err):
                return None
            raise

    def _is_file(self, key: str) -> bool:
        return self._head(key) is not None

    def _is_folder(self, key: str) -> bool:
        return next(self._objects(key), None) is not None

    def _check_parents(self, key: str) -> None:
        """Buckets allow 'a' and 'a/b' side by side; a filesystem, and so this store, does not."""
        for parent in PurePosixPath(key).parents:
            if str(parent) != "." and self._is_file(str(parent)):
                raise Conflict("a file stands where a folder of this path should be")

    def write(self, key: str, data: BinaryIO) -> FileInfo:
        if self._is_folder(key):
            raise Conflict("a folder with that name exists")
        self._check_parents(key)
        self.s3.upload_fileobj(data, self.bucket, self._key(key))
        return self.stat(key)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except Exception as err:
            if self._missing(err):
                raise NotFound("file not found") from None
            raise

    def stat(self, key: str) -> FileInfo:
        head = self._head(key)
        if head is not None:
            return FileInfo(key, PurePosixPath(key).name, False, head["ContentLength"], head["LastModified"])
        if self._is_folder(key):
            return FileInfo(key, PurePosixPath(key).name, True, 0, None)
        raise NotFound("file not found")

    def _objects(self, key: str) -> Iterator[dict]:
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(key).rstrip("/") + "/"):
            yield from page.get("Contents", [])

    def list(self, key: str) -> list[FileInfo]:
        base = self._key(key).rstrip("/") + "/"
        found: dict[str, FileInfo] = {}
        for obj in self._objects(key):
            rest = obj["Key"][len(base):]
            name, sep, _ = rest.partition("/")
            if name and name not in found:
                found[name] = FileInfo(f"{key}/{name}", name, bool(sep), 0 if sep else obj["Size"],
                                       None if sep else obj["LastModified"])
        return [found[n] for n in sorted(found)]

    def mkdir(self, key: str) -> FileInfo:
        if self._is_file(key):
            raise Conflict("a file with that name exists")
        self._check_parents(key)
        self.s3.put_object(Bucket=self.bucket, Key=self._key(key).rstrip("/") + "/.keep", Body=b"")
        return FileInfo(key, PurePosixPath(key).name, True, 0, None)

    def rename(self, key: str, new_key: str) -> FileInfo:
        info = self.stat(key)
        if self._is_file(new_key) or self._is_folder(new_key):
            raise Conflict("something already exists at the new path")
        self._check_parents(new_key)
        sources = [o["Key"] for o in self._objects(key)] if info.directory else [self._key(key)]
        for src in sources:
            dst = self._key(new_key) + src[len(self._key(key)):]
            self.s3.copy_object(Bucket=self.bucket, Key=dst, CopySource={"Bucket": self.bucket, "Key": src})
            self.s3.delete_object(Bucket=self.bucket, Key=src)
        return self.stat(new_key)

    def delete(self, key: str) -> None:
        info = self.stat(key)
        keys = [o["Key"] for o in self._objects(key)] if info.directory else [self._key(key)]
        for k in keys:
            self.s3.delete_object(Bucket=self.bucket, Key=k)

    def used_bytes(self, key: str) -> int:
        return sum(obj["Size"] for obj in self._objects(key))


def from_config(location: str, endpoint_url: str = "") -> Filestore:
    if location.startswith("s3://"):
        return S3Filestore(location, endpoint_url)
    return LocalFilestore(location)


def session_folder(session_id: str) -> str:
    return f"sessions/{session_id}"


def session_outputs(session_id: str) -> str:
    """Where a session's generated files live, relative to the owner's root."""
    return f"{session_folder(session_id)}/outputs"


def interaction_outputs(session_id: str, interaction_id: str) -> str:
    """The folder of one interaction's outputs (its images, adapter, checkpoints)."""
    return f"{session_outputs(session_id)}/{interaction_id}"


class UserFiles:
    """One user's view of the filestore: every path is checked and prefixed with their root."""

    def __init__(self, store: Filestore, user_id: str):
        self.store = store
        self.root = f"users/{user_id}"

    def key(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    # The store's operations on the user's own paths (already checked by user_path).

    def write(self, path: str, data: BinaryIO) -> FileInfo:
        return self.store.write(self.key(path), data)

    def open(self, path: str) -> BinaryIO:
        return self.store.open(self.key(path))

    def stat(self, path: str) -> FileInfo:
        return self.store.stat(self.key(path))

    def list(self, path: str) -> list[FileInfo]:
        return self.store.list(self.key(path))

    def mkdir(self, path: str) -> FileInfo:
        return self.store.mkdir(self.key(path))

    def rename(self, path: str, new_path: str) -> FileInfo:
        return self.store.rename(self.key(path), self.key(new_path))

    def delete(self, path: str) -> None:
        self.store.delete(self.key(path))

    def used_bytes(self) -> int:
        """The bytes of every file the user has stored (their uploads, their sessions' outputs)."""
        return self.store.used_bytes(self.root)

    def remove(self, *paths: str) -> None:
        """Removes files or folders of the user's; one already gone is no error (a clean-up
        after a refused request, or after the user deleted it through the filestore routes)."""
        for path in paths:
            try:
                self.delete(path)
            except NotFound:
                pass

    def relative(self, info: FileInfo) -> FileInfo:
        info.path = info.path[len(self.root) + 1:] if info.path.startswith(self.root + "/") else ""
        return info
