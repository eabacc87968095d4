"""Watches a running job from a second thread and says when it must stop: its RQ job was deleted
or cancelled (the control plane does both when the session is cancelled or deleted), another
worker now holds it, or it ran past its deadline.

Polling the job's hash in Redis a few times a second costs one small read each time and needs no
report from the job itself, so a job stops promptly even in the middle of a denoising step that
takes minutes (the pipeline checks `stop` between sub-module calls: runner/images/interruption.py), a
chat waiting on its model server (runner/text/abortable.py closes the request) or a training process
(killed: its memory is freed at once).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

GONE = "gone"
DEADLINE = "deadline"


class StopSignal:
    """Says once that something must stop: `stop` is set and every callback runs, once."""

    def __init__(self):
        self.stop = threading.Event()
        self._callbacks: list = []
        self._lock = threading.Lock()

    def on_stop(self, callback) -> None:
        """Calls `callback()` once it must stop (at once if it must already)."""
        with self._lock:
            if not self.stop.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def fire(self) -> None:
        with self._lock:
            self.stop.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception as err:
                log.warning("stopping: %s", err)


class JobWatch(StopSignal):
    def __init__(self, rq_job: Any | None, deadline_seconds: float, interval: float = 0.1):
        """`rq_job`: the running RQ job (None when called outside a worker: only the deadline counts).
        `stop` is set once the job must stop; `reason` says why."""
        super().__init__()
        self.rq_job = rq_job
        self.deadline = time.monotonic() + deadline_seconds
        self.interval = interval
        self.reason = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-watch", daemon=True)

    def _still_ours(self) -> bool:
        status, worker = self.rq_job.connection.hmget(self.rq_job.key, "status", "worker_name")
        return status == b"started" and (worker or b"").decode() == (self.rq_job.worker_name or "")

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            if time.monotonic() > self.deadline:
                self.reason = DEADLINE
            elif self.rq_job is not None:
                try:
                    if not self._still_ours():
                        self.reason = GONE
                except Exception as err:  # Redis away for a moment: keep working, look again
                    log.warning("could not look at job %s: %s", self.rq_job.id, err)
            if self.reason:
                self.fire()
                return

    def __enter__(self) -> "JobWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=5)
