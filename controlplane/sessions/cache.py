"""Recent status-poll answers, kept per control-plane process so a poll of an unchanged session
costs no query.

Curl scripts and SDKs poll `GET /api/v1/sessions/{id}` many times per change. Every change to
what that answer shows fires a trigger that announces the session's id on the channel
`helix_session_changed` (migration 0007); each process LISTENs on one connection of its own and
drops the answers it hears of.

Hearing is made certain, not likely: a kept answer is served only after a sync on the listening
connection that began after the poll arrived (an empty query). PostgreSQL signals every listening
backend while a transaction commits, before its writer hears COMMIT, and a backend sends the
notifications it was signalled about before it reports itself ready for the next query; so once
the sync is answered, every change committed before the poll arrived has been heard, whichever
process or replica wrote it (a client never reads a session older than its own last write). One
sync serves every poll that arrived before it was sent (under gevent, all those of one loop turn);
a round trip costs about 57 µs of CPU, both sides together, against about 290 µs for reading the
session (bench/README.md, P1).

While the listener is down or reconnecting, polls read PostgreSQL and nothing is kept; on
(re)connecting the copy is emptied. An answer read before an announcement and offered after it is
not kept (a count of announcements, taken before the read). Answers whose content changes with
no write are not kept at all: an interaction still queued shows its place in the queue, read from
Redis at each poll. No answer is kept longer than MAX_AGE_SECONDS, a safety net only.
"""
from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable

import psycopg
from cachetools import TTLCache
from gevent import monkey
from psycopg import pq

CHANNEL = "helix_session_changed"
APPLICATION_NAME = "helix-session-cache"  # how the listening connection shows in pg_stat_activity
MAX_AGE_SECONDS = 60.0
# One answer may take at most this share of the copy (a fine-tune's pairs can be megabytes).
LARGEST_SHARE = 16
# A poll waits at most this long for its sync before it reads PostgreSQL itself.
SYNC_WAIT_SECONDS = 1.0

log = logging.getLogger(__name__)


class _Answer:
    """A kept answer and whose it is."""
    __slots__ = ("owner", "body")

    def __init__(self, owner: str, body: bytes):
        self.owner, self.body = owner, body


class _Sync:
    """The polls one empty query answers for: told when its answer came (ok) or the listener failed."""
    __slots__ = ("done", "ok")

    def __init__(self):
        self.done = threading.Event()
        self.ok = False

    def end(self, ok: bool) -> None:
        self.ok = ok
        self.done.set()


class SessionCache:
    """Answers (JSON bytes) by session id with their owner, dropped when PostgreSQL announces a change."""

    def __init__(self, database_url: str, max_bytes: int):
        self._url = database_url
        self._max_bytes = max_bytes
        self._answers: TTLCache = TTLCache(maxsize=max(max_bytes, 1), ttl=MAX_AGE_SECONDS,
                                           getsizeof=lambda answer: len(answer.body) + 200)
        self._lock = threading.Lock()  # guards everything below
        self._listening = False
        self._heard = 0  # announcements (and reconnections) so far: an answer read before one is not kept
        self._pgconn: pq.abc.PGconn | None = None  # the listening connection, while it listens
        self._gathering: _Sync | None = None  # polls that arrived since the last empty query was sent
        self._on_wire: _Sync | None = None  # the polls the empty query on the wire answers for
        self._send_soon: Callable[[Callable[[], None]], object] | None = None  # gevent: after this loop turn
        self._send_planned = False
        self._started_in: int | None = None  # the process that started the listener (gunicorn forks)
        self._stopping = threading.Event()
        self._was_listening = False  # the last connection got as far as LISTEN (then retry at once)

    @property
    def enabled(self) -> bool:
        return self._max_bytes > 0

    def get(self, session_id: str, owner: str) -> bytes | None:
        """The kept answer, once every change committed before this call has been heard; None
        when there is none (or it is another user's, or the listener is away)."""
        if not self.enabled:
            return None
        self._ensure_listening()
        with self._lock:
            answer = self._answers.get(session_id)
            if answer is None or answer.owner != owner or not self._listening:
                return None
            sync = self._gathering = self._gathering or _Sync()
            if self._on_wire is None and not self._send_planned:
                if self._send_soon is None:
                    self._send_sync()
                else:  # under gevent the polls this loop turn serves share one empty query
                    self._send_planned = True
                    self._send_soon(self._planned_send)
        if not sync.done.wait(SYNC_WAIT_SECONDS) or not sync.ok:
            return None
        with self._lock:
            # Still kept: not dropped on hearing of a change (nor expired, nor pushed out) meanwhile.
            return answer.body if self._listening and self._answers.get(session_id) is answer else None

    def mark(self) -> int | None:
        """Taken before reading a session from PostgreSQL: None when the answer must not be kept."""
        if not self.enabled:
            return None
        with self._lock:
            return self._heard if self._listening else None

    def put(self, session_id: str, owner: str, answer: bytes, mark: int | None) -> None:
        """Keeps an answer read after `mark`, unless a change was announced since."""
        if mark is None or len(answer) * LARGEST_SHARE > self._max_bytes:
            return
        with self._lock:
            if self._heard == mark and self._listening:
                self._answers[session_id] = _Answer(owner, answer)

    def stop(self) -> None:
        self._stopping.set()

    def _planned_send(self) -> None:
        """Runs in gevent's hub, which must never block: the lock is held only between switches, but
        should it be held, the send waits for the next loop turn."""
        if not self._lock.acquire(blocking=False):
            self._send_soon(self._planned_send)
            return
        try:
            self._send_planned = False
            self._send_sync()
        finally:
            self._lock.release()

    def _send_sync(self) -> None:
        """Sends an empty query for the gathered polls (holding the lock); its answer is their sync.
        A poll sends it itself, so the listener needs no wake-up to send it."""
        if self._gathering is None or self._on_wire is not None or self._pgconn is None:
            return
        try:
            self._pgconn.send_query(b"")
        except Exception:  # noqa: BLE001 - the listener finds the connection broken and ends every wait
            return
        self._on_wire, self._gathering = self._gathering, None

    def _forget(self, session_id: str) -> None:
        self._heard += 1
        if session_id == "*":
            self._answers.clear()
        else:
            self._answers.pop(session_id, None)

    def _ensure_listening(self) -> None:
        pid = os.getpid()
        if self._started_in == pid:
            return
        with self._lock:
            if self._started_in == pid:
                return
            self._started_in, self._listening = pid, False
            self._answers.clear()
            if monkey.is_module_patched("threading"):
                import gevent

                self._send_soon = gevent.get_hub().loop.run_callback
            threading.Thread(target=self._listen_forever, name="helix-session-cache", daemon=True).start()

    def _listen_forever(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            self._was_listening = False
            try:
                self._listen()
            except Exception as err:  # noqa: BLE001 - any failure: polls read PostgreSQL until it is back
                # Once per outage: a stopped PostgreSQL would otherwise log every retry.
                (log.warning if self._was_listening else log.debug)(
                    "session cache listener: %s: %s; polls read PostgreSQL until it is back",
                    type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
            finally:
                with self._lock:
                    self._listening, self._pgconn = False, None
                    self._heard += 1
                    self._answers.clear()
                    for sync in (self._on_wire, self._gathering):
                        if sync is not None:
                            sync.end(ok=False)
                    self._on_wire = self._gathering = None
            delay = 0.1 if self._was_listening else min(delay * 2, 5.0)
            self._stopping.wait(delay)

    def _listen(self) -> None:
        # TCP keepalives: a peer gone without closing the connection is noticed within seconds.
        with psycopg.connect(self._url, autocommit=True, application_name=APPLICATION_NAME, keepalives=1,
                             keepalives_idle=5, keepalives_interval=2, keepalives_count=3) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            pgconn = conn.pgconn
            with self._lock:
                self._answers.clear()  # what was announced before LISTEN is unknown
                self._heard += 1
                self._listening, self._pgconn = True, pgconn
            self._was_listening = True
            wait_readable = _waiter()
            while not self._stopping.is_set():
                if not wait_readable(pgconn.socket, 5.0):
                    continue
                with self._lock:
                    pgconn.consume_input()  # raises when the connection is gone
                    synced = False
                    while self._on_wire is not None and not pgconn.is_busy():  # get_result() blocks while busy
                        result = pgconn.get_result()
                        if result is None:  # ReadyForQuery: what it was signalled of came before it
                            synced = True
                            break
                        if result.status not in (pq.ExecStatus.EMPTY_QUERY, pq.ExecStatus.COMMAND_OK):
                            raise psycopg.OperationalError(f"sync failed: {result.error_message!r}")
                    while (note := pgconn.notifies()) is not None:
                        self._forget(note.extra.decode())
                    if synced:
                        answered, self._on_wire = self._on_wire, None
                        answered.end(ok=True)
                        self._send_sync()  # for the polls that came while it was on the wire


def _waiter() -> Callable[[int, float], bool]:
    """waits(fd, timeout) -> readable: gevent's wait under gevent (other greenlets run meanwhile),
    else the OS's select."""
    if monkey.is_module_patched("select"):
        from gevent.socket import wait_read

        def wait(fd: int, timeout: float) -> bool:
            try:
                wait_read(fd, timeout)
                return True
            except TimeoutError:
                return False
        return wait
    return lambda fd, timeout: bool(select.select([fd], [], [], timeout)[0])
