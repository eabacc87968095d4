"""Watches a running job from a second thread and says when it must stop: its RQ job was deleted
or cancelled (the control plane does both when the session is cancelled or deleted), another
worker now holds it, or it ran past its deadline.

Polling the job's hash in Redis a few times a second costs one small read each time and needs no
report from the job itself, so a job stops promptly even in the middle of a denoising step that
takes minutes (the pipeline checks `stop` between sub-module calls: runner/images/interruption.py), a
chat waiting on its model server (runner/text/abortable.py closes the request) or a training process
(killed: its memory is freed at once).

One thread per process watches all its jobs, and reads the hashes of those due in one pipelined
round trip: a text worker holds 128 chats at once, and a thread and four reads a second for each
cost more CPU than streaming their tokens did (bench/README.md, P3).
"""
from __future__ import annotations

import logging
import os
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
        `stop` is set once the job must stop; `reason` says why. Looked at every `interval` seconds."""
        super().__init__()
        self.rq_job = rq_job
        self.deadline = time.monotonic() + deadline_seconds
        self.interval = interval
        self.reason = ""
        self.due = 0.0  # when the watcher looks next (monotonic)

    def still_ours(self, status: bytes | None, worker: bytes | None) -> bool:
        """From the job hash's `status` and `worker_name`: the job runs, on this job's worker."""
        return status == b"started" and (worker or b"").decode() == (self.rq_job.worker_name or "")

    def __enter__(self) -> "JobWatch":
        _watcher().add(self)
        return self

    def __exit__(self, *exc) -> None:
        _watcher().remove(self)


class _Watcher:
    """The process's one thread that looks at every job watch when it is due."""

    def __init__(self):
        self._watches: set[JobWatch] = set()
        self._lock = threading.Lock()
        self._changed = threading.Event()
        threading.Thread(target=self._run, name="job-watch", daemon=True).start()

    def add(self, watch: JobWatch) -> None:
        watch.due = time.monotonic() + watch.interval
        with self._lock:
            self._watches.add(watch)
        self._changed.set()

    def remove(self, watch: JobWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def _take(self, watch: JobWatch) -> bool:
        """Removes a watch that is to fire; False when its job has already left it."""
        with self._lock:
            held = watch in self._watches
            self._watches.discard(watch)
        return held

    def _run(self) -> None:
        while True:
            try:
                self._round()
            except Exception:  # never leaves the process's jobs unwatched
                log.exception("watching jobs failed; looking again")
                time.sleep(0.1)

    def _round(self) -> None:
        """Looks at the watches that are due, then waits for the next one to be due (or a new one)."""
        self._changed.clear()  # before the snapshot: a watch added from here on wakes the wait
        with self._lock:
            watches = list(self._watches)
        now = time.monotonic()
        due = [w for w in watches if w.due <= now]
        for watch in due:
            watch.due = now + watch.interval
            if now > watch.deadline:
                watch.reason = DEADLINE
        self._look_at_jobs([w for w in due if not w.reason and w.rq_job is not None])
        for watch in due:
            if watch.reason and self._take(watch):  # not if its job ended meanwhile
                # Its callbacks (closing a request, killing a trainer) never hold up the others.
                threading.Thread(target=watch.fire, name="job-stop", daemon=True).start()
        wait = min((w.due for w in watches if not w.reason), default=now + 60) - time.monotonic()
        self._changed.wait(max(wait, 0.0))

    @staticmethod
    def _look_at_jobs(watches: list[JobWatch]) -> None:
        """One pipelined read of the jobs' hashes per Redis connection."""
        by_connection: dict[int, list[JobWatch]] = {}
        for watch in watches:
            by_connection.setdefault(id(watch.rq_job.connection), []).append(watch)
        for group in by_connection.values():
            try:
                with group[0].rq_job.connection.pipeline(transaction=False) as pipe:
                    for watch in group:
                        pipe.hmget(watch.rq_job.key, "status", "worker_name")
                    answers = pipe.execute()
            except Exception as err:  # Redis away for a moment: keep working, look again
                log.warning("could not look at %d jobs: %s", len(group), err)
                continue
            for watch, (status, worker) in zip(group, answers):
                if not watch.still_ours(status, worker):
                    watch.reason = GONE


_process_watcher: tuple[int, _Watcher] | None = None
_process_watcher_lock = threading.Lock()


def _watcher() -> _Watcher:
    """This process's watcher, started on first use (again in a forked child, which has no thread)."""
    global _process_watcher
    with _process_watcher_lock:
        if _process_watcher is None or _process_watcher[0] != os.getpid():
            _process_watcher = (os.getpid(), _Watcher())
        return _process_watcher[1]
