"""Makes the queues agree with PostgreSQL, so no session is lost when a machine dies.

Each pass looks at every unfinished system interaction and its job:
- no job in Redis (Redis restarted, or the enqueue after commit failed): queue it again;
- a job started by a runner worker whose heartbeat has expired (killed mid-job): queue it again;
- a job RQ gave up on: mark the interaction as an error, so clients stop waiting;
- a queued job that no live runner serving its model could ever hold (its declared memory need
  is more than the largest of them has): the same, with the reason.
- a queued job that is on no queue (a paused worker took it and never started it): queue it again.
An interaction changed in the last few seconds is left alone: whoever changed it is enqueueing.
A job re-queued too often ends the interaction with an error instead of crashing runners forever.
Every replica runs a reconciler thread; a Redis lock lets one pass run at a time.
"""
from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Callable

from flask import Flask
from redis.exceptions import LockError
from rq.job import JobStatus

from controlplane import metrics
from controlplane.fleet import fair_share_store, scheduling
from controlplane.fleet.dispatch import Dispatcher, job_stage, stage_of
from controlplane.sessions import events, fair_share
from controlplane.sessions import store as sessions_store
from controlplane.sessions.views import interaction_view
from controlplane.storage.rows import InteractionRow, SessionRow
from shared.background import run_every
from shared.jobs import WorkKind
from shared.runners import worker_alive_key
from shared.types import InteractionState
from shared.updates import EVENT_INTERACTION

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
_LOCK = "helix:reconciler:lock"
_UNLISTED = "helix:reconciler:unlisted:"  # a queued job found off its queue, by the pass that found it


class Reconciler:
    def __init__(self, app: Flask):
        self.app = app
        self.redis = app.extensions["redis"]
        self.dispatcher: Dispatcher = app.extensions["dispatcher"]
        self.grace_seconds = 3.0  # leave the request that created an interaction time to enqueue it
        self.page_size = 500
        self._fits: dict[tuple[str, WorkKind], str] = {}  # the fleet's memory fit, per pass

    def _fail(self, conn, interaction: InteractionRow, session_id: str, error: str,
              after_commit: list[Callable[[], None]]) -> None:
        row = sessions_store.apply_update(
            conn, interaction.id, runner=interaction.runner, state=InteractionState.ERROR.value,
            message=interaction.message, progress=interaction.progress,
            status="failed", files=None, error=error, finished=True, metadata=None,
        )
        # Told once stored: a client that reads the session on the event sees the failure.
        after_commit.append(partial(events.publish, self.redis, session_id, EVENT_INTERACTION,
                                    interaction_view(row)))
        after_commit.extend(fair_share.finish(conn, self.dispatcher, interaction.id))

    def _requeue(self, conn, session: SessionRow, interaction: InteractionRow, reason: str,
                 after_commit: list[Callable[[], None]], ran: bool = True) -> None:
        """Queues the interaction's job again; `ran`: the lost job had started, which counts
        as an attempt (a job that crashes runners must not be retried forever). Unlike a request,
        the reconciler enqueues before its commit: an enqueue that fails (Redis away) rolls back
        the attempt it counted, and the next pass tries again; a commit that fails after it leaves
        a job whose rows are unchanged, which a runner runs as the same attempt."""
        attempts = int(interaction.metadata.get("attempts", 1)) + ran
        if attempts > MAX_ATTEMPTS:
            self._fail(conn, interaction, session.id,
                       f"gave up after {MAX_ATTEMPTS} attempts: {reason}", after_commit)
            return
        sessions_store.count_attempt(conn, interaction.id, attempts, f"queued again ({reason})")
        self.dispatcher.enqueue(session, sessions_store.get_interactions(conn, session.id),
                                interaction.id)
        log.warning("re-queued interaction %s (%s), attempt %d", interaction.id, reason, attempts)

    def _fleet_refusal(self, conn, model: str, kind: WorkKind) -> str:
        """Whether the fleet could ever hold such a job: asked once per model and kind in a pass."""
        key = (model, kind)
        if key not in self._fits:
            self._fits[key] = scheduling.fleet_refusal(conn, self.app.config["HELIX"], model, kind)
        return self._fits[key]

    def _changed_within_grace(self, conn, interaction: InteractionRow) -> bool:
        return sessions_store.seconds_since_update(conn, interaction) < self.grace_seconds

    def check(self, conn, interaction_id: str, session_id: str, owner: str) -> str:
        """Reconciles one interaction; returns what it did (for logs and tests). What it
        publishes or stops is done once its change is committed."""
        after_commit: list[Callable[[], None]] = []
        with conn.transaction():
            result = self._check(conn, interaction_id, session_id, owner, after_commit)
        for action in after_commit:
            action()
        return result

    def _check(self, conn, interaction_id: str, session_id: str, owner: str,
               after_commit: list[Callable[[], None]]) -> str:
        session = sessions_store.get_session(conn, session_id, owner)
        interaction = sessions_store.get_interaction_for_runner(conn, session_id, interaction_id)
        if session is None or interaction is None or interaction.finished:
            return "done"
        if interaction.state == InteractionState.EDITING:
            return "waiting-for-user"  # a fine-tune's review: its data-prep job has finished
        if fair_share_store.held(conn, interaction_id) is not None:
            return "held"  # waits in PostgreSQL for its owner's share: release_held's work
        if self._changed_within_grace(conn, interaction):
            # A retry or an approval has just committed and is enqueueing the next job: the
            # job it replaces (finished, or missing) is not a lost one.
            return "recent"
        job = self.dispatcher.fetch(interaction_id, job_stage(interaction))
        if job is None:
            self._requeue(conn, session, interaction, "job missing from the queue", after_commit)
            return "requeued-missing"
        status = job.get_status(refresh=False)
        if status == JobStatus.STARTED:
            if job.worker_name and not self.redis.exists(worker_alive_key(job.worker_name)):
                self._requeue(conn, session, interaction, f"runner worker {job.worker_name} died", after_commit)
                return "requeued-dead-worker"
            return "running"
        if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            self._fail(conn, interaction, session_id, f"the job {status.value}: see the runner's log", after_commit)
            return "failed"
        if status == JobStatus.FINISHED:
            self._requeue(conn, session, interaction, "job finished without a final update", after_commit)
            return "requeued-finished"
        refusal = self._fleet_refusal(conn, session.model_name, WorkKind(job.origin.split(":")[1]))
        if refusal:  # runners changed since it was queued: it would wait forever
            self._fail(conn, interaction, session_id, refusal, after_commit)
            after_commit.append(partial(self.dispatcher.cancel, interaction_id))
            return "failed-no-runner-fits"
        if status == JobStatus.QUEUED and not self.dispatcher.listed(job):
            # A worker took it off the queue and never started it. Seen so in two passes (a
            # worker mid-dequeue marks it started within milliseconds), it is lost: queue it
            # again, not counted as an attempt since it never ran.
            if self._unlisted_before(job):
                self._requeue(conn, session, interaction, "job taken from the queue but never started",
                              after_commit, ran=False)
                return "requeued-unstarted"
            return "queued-unlisted"
        return "queued"

    def _unlisted_before(self, job) -> bool:
        """Records that this very job (by when it was enqueued) was found off its queue; returns
        whether an earlier pass found it so too, at least `grace_seconds` ago."""
        key, seen, ttl = f"{_UNLISTED}{job.id}", f"{job.enqueued_at}".encode(), 600
        if self.redis.set(key, seen, ex=ttl, nx=True) or self.redis.get(key) != seen:
            self.redis.set(key, seen, ex=ttl)  # the first sighting of this job
            return False
        return ttl - self.redis.ttl(key) >= self.grace_seconds

    def _running_on_live_workers(self, page: list[dict]) -> set[str]:
        """The page's interactions whose job a live worker runs: check() would find nothing to do
        for them, and this learns it in two round trips to Redis, not a transaction each (a
        runner holds 128 chats at once). Empty when Redis fails: each is then checked."""
        try:
            holders = self.dispatcher.holders([(row["id"], stage_of(row["mode"], row["data_prep_stage"]))
                                               for row in page])
            started = [(row["id"], holder) for row, holder in zip(page, holders) if holder]
            with self.redis.pipeline(transaction=False) as pipe:
                for _, holder in started:
                    pipe.exists(worker_alive_key(holder))
                alive = pipe.execute()
        except Exception as err:
            log.warning("could not read the jobs of %d interactions at once: %s", len(page), err)
            return set()
        return {interaction_id for (interaction_id, _), up in zip(started, alive) if up}

    def run_once(self) -> dict[str, str]:
        from controlplane.storage import db

        results: dict[str, str] = {}
        self._fits = {}  # runners come and go between passes
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
                    running = self._running_on_live_workers(page)
                    for row in page:
                        if row["id"] in running:
                            results[row["id"]] = "running"
                            continue
                        try:
                            results[row["id"]] = self.check(conn, row["id"], row["session_id"], row["owner"])
                        except Exception:
                            log.exception("reconciling interaction %s failed", row["id"])
                    after = (page[-1]["created"], page[-1]["id"])
                    lock.reacquire()  # a long pass keeps its lock
                released = fair_share.release_held(conn, self.dispatcher)
                if released:
                    log.info("released %d jobs held back by fair share", released)
        finally:
            try:
                lock.release()
            except LockError:
                log.warning("a reconciler pass outlived its lock")
        metrics.count_reconciled(results)
        return results

    def start_thread(self, interval: float) -> threading.Thread:
        return run_every(interval, "helix-reconciler", self.run_once)
