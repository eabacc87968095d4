"""Every live stream of a control-plane process on one Redis pub/sub connection.

A stream used to subscribe on a connection of its own: 10,000 open streams were 10,000 Redis
clients (past Valkey's default `maxclients`) and twice as many open files. Here one listener
per process reads one connection and hands each message to the streams of its channel; a
channel is subscribed while at least one stream of this process follows it.

When that connection drops (Redis restarted, the connection killed), the listener connects
again, subscribes to every channel that is still followed, and tells each stream it may have
missed messages (`RESYNC`), so the stream reads its session again instead of waiting.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# Put in a listener's queue after the connection was lost and made again: messages published
# meanwhile are gone, so the stream reads its session again.
RESYNC = {"type": "resync"}
# How long a new listener waits for Redis to confirm its channel's subscription before it goes
# on: what the stream reads after that confirmation cannot miss a message published after it.
CONFIRM_SECONDS = 5.0
RECONNECT_SECONDS = (0.1, 2.0)  # first and longest wait between attempts to connect again
CLIENT_NAME = "helix-live-events"  # the subscription's name in Redis's CLIENT LIST


class Listener:
    """One stream's messages of one channel; `close` when the stream ends."""

    def __init__(self, hub: "Subscriptions", channel: bytes):
        self.hub, self.channel = hub, channel
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()

    def get(self, timeout: float) -> dict[str, Any] | None:
        """The next message (its `data` as published, or RESYNC), or None after `timeout`."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.hub._remove(self)

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class Subscriptions:
    """This process's channels on one pub/sub connection, read by one thread (a greenlet under
    gunicorn's gevent worker). `redis` is the process's client for everything else a stream
    reads; the subscription has a client of its own that never retries behind the listener's
    back, so every lost connection is seen here and followed by RESYNC."""

    def __init__(self, redis_url: str, redis: Redis):
        self.redis = redis
        self._own = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
                                   retry=Retry(NoBackoff(), 0), client_name=CLIENT_NAME)
        self._lock = threading.Lock()
        self._listeners: dict[bytes, set[Listener]] = {}
        self._count = 0
        self._confirmed: dict[bytes, threading.Event] = {}
        self._pubsub = None
        self._reader: threading.Thread | None = None

    @property
    def count(self) -> int:
        """How many listeners (live streams and waiting calls) this process holds."""
        return self._count

    def listen(self, channel: str) -> Listener:
        """A listener of `channel`, subscribed once this returns (or CONFIRM_SECONDS passed)."""
        name = channel.encode()
        listener = Listener(self, name)
        with self._lock:
            group = self._listeners.setdefault(name, set())
            group.add(listener)
            self._count += 1
            first = len(group) == 1
            if first:
                self._confirmed[name] = confirmed = threading.Event()
            else:
                confirmed = self._confirmed[name]
            if first and self._pubsub is not None:
                try:
                    self._pubsub.subscribe(name)
                except Exception:
                    log.warning("could not subscribe to a session's events: it is, once Redis answers again")
                    self._pubsub = None  # the listener connects again, with every followed channel
            if self._reader is None:
                self._reader = threading.Thread(target=self._read_forever, name="event-subscriptions", daemon=True)
                self._reader.start()
        confirmed.wait(CONFIRM_SECONDS)
        return listener

    def _remove(self, listener: Listener) -> None:
        with self._lock:
            group = self._listeners.get(listener.channel)
            if group is None or listener not in group:
                return
            group.discard(listener)
            self._count -= 1
            if group:
                return
            del self._listeners[listener.channel]
            self._confirmed.pop(listener.channel, None)
            if self._pubsub is not None:
                try:
                    self._pubsub.unsubscribe(listener.channel)
                except Exception:
                    self._pubsub = None  # the next connection subscribes to followed channels only

    def _read_forever(self) -> None:
        wait = RECONNECT_SECONDS[0]
        lost = False
        while True:
            pubsub = self._own.pubsub()
            try:
                with self._lock:
                    channels = list(self._listeners)
                    if channels:  # with none, the first listener's subscribe connects
                        pubsub.subscribe(*channels)
                    self._pubsub = pubsub
                if lost:
                    self._tell_everyone(RESYNC)
                    lost = False
                wait = RECONNECT_SECONDS[0]
                while self._pubsub is pubsub:  # else a listener found the connection broken
                    message = pubsub.get_message(timeout=5.0)
                    if message is not None:
                        self._deliver(message)
                raise ConnectionError("a subscribe or unsubscribe failed")
            except Exception as err:  # noqa: BLE001 - the connection is made again
                lost = True
                log.warning("lost the live events' Redis connection (%s): connecting again", err)
            finally:
                with self._lock:
                    if self._pubsub is pubsub:
                        self._pubsub = None
                try:
                    pubsub.close()
                except Exception:
                    pass
            time.sleep(wait)
            wait = min(wait * 2, RECONNECT_SECONDS[1])

    def _deliver(self, message: dict[str, Any]) -> None:
        kind, channel = message.get("type"), message.get("channel")
        with self._lock:
            if kind == "subscribe":
                confirmed = self._confirmed.get(channel)
                if confirmed is not None:
                    confirmed.set()
                return
            if kind != "message":
                return
            group = list(self._listeners.get(channel, ()))
        for listener in group:
            listener.messages.put(message["data"])

    def _tell_everyone(self, message: dict[str, Any]) -> None:
        with self._lock:
            everyone = [listener for group in self._listeners.values() for listener in group]
        for listener in everyone:
            listener.messages.put(message)
