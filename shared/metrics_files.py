"""The folder where processes of one server write their Prometheus values (prometheus_client's
multiprocess mode), for both sides: gunicorn's workers on the control plane, a runner's workers.

It must be named in PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported in any of
those processes (the library picks its storage then), and empty at start (values of an earlier
run would be summed in). This module never imports prometheus_client itself.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(prefix: str, operators_own: bool = True) -> tuple[str, bool]:
    """Names a folder in the environment (children inherit it): the operator's own, emptied of old
    values (unless `operators_own` is false: a runner started from the same environment as a
    control plane must not wipe the control plane's), or a new temporary one. Returns it, and
    whether it was made here (remove it at exit)."""
    folder = os.environ.get(MULTIPROC_ENV) if operators_own else None
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink(missing_ok=True)
        return folder, False
    folder = tempfile.mkdtemp(prefix=prefix)
    os.environ[MULTIPROC_ENV] = folder
    return folder, True


def remove(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)
