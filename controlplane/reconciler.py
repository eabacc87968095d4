"""Makes the queues agree with PostgreSQL, so no session is lost when a machine dies.

Each pass looks at every unfinished system interaction and its job:
- no job in Redis (Redis restarted, or the enqueue after commit failed): queue it again;
- a job started by a runner worker whose heartbeat has expired (killed mid-job): queue it again;
- a job RQ gave up on: mark the interaction as an error, so clients stop waiting.
An interaction changed in the last few seconds is left alone: whoever changed it is enqueueing.
A job re-queued too often ends the interaction with an error instead of crashing runners forever.
Every replica runs a reconciler thread; a Redis lock lets one pass run at a time.
"""
from __future__ import annotations

import logging
import threading
import time

from flask import Flask
from psycopg.types.json import Jsonb
from redis.exceptions import LockError
from rq.job import JobStatus

from controlplane import events, metrics, sessions_store
from controlplane.dispatch import Dispatcher, job_stage
from controlplane.views import interaction_view
from shared.runners import worker_alive_key
from shared.types import InteractionState
from shared.updates import EVENT_INTERACTION

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
_LOCK = "helix:reconciler:lock"


class Reconciler:
    def __init__(self, app: Flask):
        self.app = app
        self.redis = app.extensions["redis"]
        self.dispatcher: Dispatcher = app.extensions["dispatcher"]
        self.grace_seconds = 3.0  # leave the request that created an interaction time to enqueue it
        self.page_size = 500

    def _fail(self, conn, interaction: dict, session_id: str, error: str) -> None:
        row = sessions_store.apply_update(
            conn, interaction["id"], runner=interaction["runner"], state=InteractionState.ERROR.value,
            message=interaction["message"], progress=interaction["progress"],
            status="failed", files=None, error=error, finished=True, metadata=None,
        )
        events.publish(self.redis, session_id, EVENT_INTERACTION, interaction_view(row))

    def _requeue(self, conn, session: dict, interaction: dict, reason: str) -> None:
        attempts = int(interaction["metadata"].get("attempts", 1)) + 1
        if attempts > MAX_ATTEMPTS:
            self._fail(conn, interaction, session["id"],
                       f"gave up after {MAX_ATTEMPTS} attempts: {reason}")
            return
        conn.execute("UPDATE interactions SET metadata = metadata || %s, status = %s WHERE id = %s",
                     (Jsonb({"attempts": attempts}), f"queued again ({reason})", interaction["id"]))
        self.dispatcher.enqueue(session, sessions_store.get_interactions(conn, session["id"]),
                                interaction["id"])
        log.warning("re-queued interaction %s (%s), attempt %d", interaction["id"], reason, attempts)

    def _changed_within_grace(self, conn, interaction: dict) -> bool:
        now = conn.execute("SELECT now() AS now").fetchone()["now"]
        return (now - interaction["updated"]).total_seconds() < self.grace_seconds

    def check(self, conn, interaction_id: str, session_id: str, owner: str) -> str:
        """Reconciles one interaction; returns what it did (for logs and tests)."""
        with conn.transaction():
            session = sessions_store.get_session(conn, session_id, owner)
            interaction = sessions_store.get_interaction_for_runner(conn, session_id, interaction_id)
            if session is None or interaction is None or interaction["finished"]:
                return "done"
            if interaction["state"] == InteractionState.EDITING:
                return "waiting-for-user"  # a fine-tune's review: its data-prep job has finished
            if self._changed_within_grace(conn, interaction):
                # A retry or an approval has just committed and is enqueueing the next job: the
                # job it replaces (finished, or missing) is not a lost one.
                return "recent"
            job = self.dispatcher.fetch(interaction_id, job_stage(interaction))
            if job is None:
                self._requeue(conn, session, interaction, "job missing from the queue")
                return "requeued-missing"
            status = job.get_status(refresh=False)
            if status == JobStatus.STARTED:
                if job.worker_name and not self.redis.exists(worker_alive_key(job.worker_name)):
                    self._requeue(conn, session, interaction, f"runner worker {job.worker_name} died")
                    return "requeued-dead-worker"
                return "running"
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                self._fail(conn, interaction, session_id, f"the job {status.value}: see the runner's log")
                return "failed"
            if status == JobStatus.FINISHED:
                self._requeue(conn, session, interaction, "job finished without a final update")
                return "requeued-finished"
            return "queued"

    def run_once(self) -> dict[str, str]:
        from controlplane import db

        results: dict[str, str] = {}
        # redis-py's lock releases only its own token: a pass that outlived the timeout never
        # removes the lock of the replica that took over.
        lock = self.redis.lock(_LOCK, timeout=30)
        if not lock.acquire(blocking=False):
            return results
        try:
            with self.app.app_context(), db.pool().connection() as conn:
                after = None
                # Every unfinished interaction, a page at a time: a backlog queued for a model
                # no runner serves must not hide the jobs Redis lost behind it.
                while page := sessions_store.unfinished_system_interactions(
                        conn, self.grace_seconds, after, self.page_size):
                    conn.commit()
                    for row in page:
                        try:
                            results[row["id"]] = self.check(conn, row["id"], row["session_id"], row["owner"])
                        except Exception:
                            log.exception("reconciling interaction %s failed", row["id"])
                    after = (page[-1]["created"], page[-1]["id"])
                    lock.reacquire()  # a long pass keeps its lock
        finally:
            try:
                lock.release()
            except LockError:
                log.warning("a reconciler pass outlived its lock")
        metrics.count_reconciled(results)
        return results

    def start_thread(self, interval: float) -> threading.Thread:
        def loop() -> None:
            while True:
                time.sleep(interval)
                try:
                    self.run_once()
                except Exception:
                    log.warning("reconciler pass failed", exc_info=True)

        thread = threading.Thread(target=loop, name="helix-reconciler", daemon=True)
        thread.start()
        return thread
