"""gunicorn server hooks of the control plane (loaded with `-c python:controlplane.http.gunicorn_hooks`
by serving.gunicorn_command, so every launcher gets them).

Metrics in prometheus_client's multiprocess mode need one folder per gunicorn master, empty at
start, named in PROMETHEUS_MULTIPROC_DIR before any worker imports prometheus_client: the master
names it before it forks its workers (shared/metrics_files.py), forgets a dead worker's live
gauges, and removes a folder it made when it exits. prometheus_client is imported here only inside
a hook, once the variable is set; gunicorn reads only its own setting names from this module.
"""
from __future__ import annotations

from shared import metrics_files

_made: list[str] = []


def on_starting(server) -> None:
    folder, made = metrics_files.prepare("helix-metrics-")
    if made:
        _made.append(folder)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    for folder in _made:
        metrics_files.remove(folder)
