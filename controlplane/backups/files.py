"""The filestore's part of a backup: every file and folder under `users/`, local or S3, copied
into the backup's `files/` folder by its key, and written back through the target's filestore."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from controlplane.errors import NotFound
from controlplane.storage.filestore import FileInfo, Filestore

ROOT = "users"  # every key is users/<id>/...


def walk(store: Filestore, key: str = ROOT) -> Iterator[FileInfo]:
    """Every folder and file under `key`, a folder before what it holds."""
    for info in store.list(key):
        if info.name.startswith("."):  # an S3 folder's marker, or a file still being written
            continue
        yield info
        if info.directory:
            yield from walk(store, info.path)


def export(store: Filestore, folder: Path) -> dict:
    """Copies the filestore into `folder`; returns the count of files and folders and the bytes."""
    files = folders = size = 0
    for info in walk(store):
        target = folder / info.path
        if info.directory:
            target.mkdir(parents=True, exist_ok=True)
            folders += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with store.open(info.path) as data, open(target, "wb") as out:
                shutil.copyfileobj(data, out, 1024 * 1024)
        except NotFound:
            continue  # deleted since it was listed: its session was deleted after the snapshot
        files, size = files + 1, size + target.stat().st_size
    return {"files": files, "folders": folders, "bytes": size}


def load(store: Filestore, folder: Path) -> int:
    """Writes every file and folder of the backup into `store`; returns the files written."""
    written = 0
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_dir():
            store.mkdir(key)
        else:
            with open(path, "rb") as data:
                store.write(key, data)
            written += 1
    return written
