"""Fair share of the fleet between users.

Work goes to one RQ queue per kind of work and model, taken first come, first served. Left at
that, one user's backlog of 300 chats holds up everyone else's next chat for the whole backlog.
So a job is queued in Redis ("released") only while its owner has fewer jobs released there than
their share of the queue's workers (the workers the live runners serving the model reported for
that kind of work, divided between the users with work for the queue, at least one each), or
while a worker would otherwise idle: a user alone takes every worker, and no worker waits while
work does. While no runner has reported workers for the queue, nothing is held. The
rest wait in PostgreSQL (`queued_work`), oldest first, and are released as the owner's jobs end.
Another user's new job so waits behind about a worker's turn of anyone's backlog, not all of it.
A user's plan may cap their jobs at once (concurrent_jobs, on every queue together: the rest wait
here the same way) and their jobs waiting for a worker (queued_jobs: a request past it is refused
with a 429 and stores nothing).

Each decision is taken under a lock per owner in the caller's transaction, and what it
releases is queued once that transaction commits: a held job is never queued twice, and it
survives restarts of PostgreSQL, Redis and the control plane (the reconciler re-queues a released
job that Redis lost, and releases what a lost decision left waiting).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import psycopg

from controlplane.errors import TooManyRequests
from controlplane.fleet import fair_share_store
from controlplane.fleet import store as fleet_store
from controlplane.fleet.dispatch import Dispatcher, job_stage
from controlplane.fleet.overview import kind_and_model
from controlplane.fleet.scheduling import session_type_of, work_kind
from controlplane.sessions import store as sessions_store
from controlplane.storage import db
from controlplane.storage.rows import InteractionRow, SessionRow
from controlplane.usage import admission, owner_limits, token_charges
from shared.jobs import QUEUES_OF_WORKER, WorkKind, queue_name

Action = Callable[[], object]


class QueueFull(TooManyRequests):
    """The user's plan allows no more jobs waiting for a worker: the request stored nothing."""

    def __init__(self, message: str):
        super().__init__(message)
        self.details = {"code": "rate_limit_exceeded", "limit": "queued_jobs"}
        self.headers = {"Retry-After": "5"}


def queue_of(session: SessionRow, interaction: InteractionRow) -> str:
    """The RQ queue the interaction's next job goes to."""
    return queue_name(work_kind(session.type, job_stage(interaction)), session.model_name)


def submit(conn: psycopg.Connection, dispatcher: Dispatcher, session: SessionRow,
           interactions: list[InteractionRow], interaction_id: str) -> None:
    """The interaction's job, in the request's unit of work: queued once it commits if its owner
    is within their share of the queue, else held here until their earlier jobs end."""
    interaction = next(i for i in interactions if i.id == interaction_id)
    queue = queue_of(session, interaction)
    fair_share_store.lock(conn, session.owner)  # before any row of theirs, as release() does
    limit = admission.queued_jobs_limit()
    if limit and fair_share_store.waiting(conn, session.owner) >= limit:
        raise QueueFull(f"you have {limit} jobs waiting for a worker, the most your plan allows:"
                        " retry once some have started")
    fair_share_store.submit(conn, interaction_id, session.owner, queue, admission.request_key_id())
    token_charges.bind_job(conn, interaction_id)
    for action in release(conn, dispatcher, session.owner, queue, {session.id: (session, interactions)}):
        db.after_commit(conn, action)


def finish(conn: psycopg.Connection, dispatcher: Dispatcher, interaction_id: str) -> list[Action]:
    """The interaction needs no worker any more (it ended, or waits for its user): its place goes
    and its owner's next jobs on that queue are released. Returns the enqueues to do after commit."""
    place = fair_share_store.place_of(conn, interaction_id)
    if place is None:
        return []
    fair_share_store.lock(conn, place[0])  # before its row, as release() does: no two wait on each other
    fair_share_store.forget(conn, interaction_id)
    return release(conn, dispatcher, *place)


def release(conn: psycopg.Connection, dispatcher: Dispatcher, owner: str, queue: str,
            read: dict[str, tuple[SessionRow, list[InteractionRow]]] | None = None) -> list[Action]:
    """Releases the owner's oldest held jobs on `queue` up to their share; returns the enqueues to
    do once the caller's transaction commits. `read`: sessions the caller holds already, by id."""
    fair_share_store.lock(conn, owner)
    workers = queue_workers(conn, dispatcher, queue)
    free = None  # no runner has reported workers for the queue: nothing to share yet
    if workers:
        share = max(1, math.ceil(workers / max(1, fair_share_store.owners_waiting_on(conn, queue))))
        # Their share, or any worker no released job would keep busy: no worker idles while work waits.
        free = max(share - fair_share_store.running(conn, queue, owner),
                   workers - fair_share_store.running(conn, queue))
    concurrent = owner_limits.limits_of_owner(conn, owner).concurrent_jobs
    if concurrent:  # their plan's jobs at once, on every queue
        left = concurrent - fair_share_store.running(conn, None, owner)
        free = left if free is None else min(free, left)
    if free is not None and free <= 0:
        return []
    actions: list[Action] = []
    for row in fair_share_store.release_oldest(conn, owner, queue, free):
        found = (read or {}).get(row["session_id"]) or sessions_store.get_session_with_interactions(
            conn, row["session_id"], owner)  # one round trip a job
        if found is not None:
            actions.append(partial(dispatcher.try_enqueue, *found, row["interaction_id"]))
    return actions


def queue_workers(conn: psycopg.Connection, dispatcher: Dispatcher, queue: str) -> int:
    """The workers the live runners serving the queue's model reported for its kind of work."""
    kind, model = kind_and_model(queue)
    takers = [worker.value for worker, queues in QUEUES_OF_WORKER.items() if kind in queues]
    return fleet_store.live_workers(conn, model, session_type_of(WorkKind(kind)).value, takers,
                                    dispatcher.config.runner_ttl)


def release_held(conn: psycopg.Connection, dispatcher: Dispatcher) -> int:
    """The reconciler's pass over held work: each owner's line on each queue released up to their
    share (runners that joined, a decision lost between commit and enqueue). Commits each line."""
    released = 0
    fair_share_store.forget_finished(conn)
    lines = fair_share_store.held_lines(conn)
    conn.commit()
    for line in lines:
        with conn.transaction():
            actions = release(conn, dispatcher, line["owner"], line["queue"])
        for action in actions:
            action()
        released += len(actions)
    return released
