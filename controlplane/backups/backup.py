"""Making a backup and restoring one (`helix backup DIR`, `helix restore DIR`).

The database is copied first, from one snapshot; then the filestore. Every file a row of the
snapshot names was written before that row was committed, so the backup holds it; files written
during the backup may be in it too, and are harmless. A file deleted between the snapshot and its
copy (its session deleted meanwhile) is missing from the backup: the manifest counts what was
copied. The manifest is written last: a folder without one is not a backup, and is refused.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from controlplane.backups import database, files
from controlplane.backups.database import BackupRefused
from controlplane.storage.filestore import Filestore

FORMAT = 1
MANIFEST = "manifest.json"


def make(database_url: str, store: Filestore, folder: Path) -> dict:
    """Writes a backup of the database and the filestore into `folder` (new, or empty)."""
    if folder.exists() and any(folder.iterdir()):
        raise BackupRefused(f"{folder} is not empty: a backup goes into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    manifest = {"format": FORMAT, "database": database.export(database_url, folder / "database")}
    manifest["files"] = files.export(store, folder / "files")
    manifest["finished"] = datetime.now(timezone.utc).isoformat()
    manifest["seconds"] = round(time.monotonic() - started, 1)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupRefused(f"{folder} holds no {MANIFEST}: not a backup, or one that did not finish") from None
    if manifest.get("format") != FORMAT:
        raise BackupRefused(f"{folder} is a backup of format {manifest.get('format')!r}; this release reads {FORMAT}")
    return manifest


def restore(database_url: str, store: Filestore, folder: Path, force: bool = False) -> dict:
    """Brings a fresh installation back to the backup: its rows replace the installation's, and
    its files are written into the installation's filestore."""
    manifest = read_manifest(folder)
    with psycopg.connect(database_url) as conn:
        made = conn.execute("SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM openai_files)").fetchone()[0]
    if made and not force:
        raise BackupRefused(f"this installation holds {made} sessions and files already: restore into a fresh one"
                             " (or pass --force to replace everything in it)")
    rows = database.load(database_url, folder / "database", manifest["database"])
    written = files.load(store, folder / "files")
    return {"began": manifest["database"]["began"], "rows": rows, "files": written}
