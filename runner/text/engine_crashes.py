"""Which request takes the shared vLLM engine down, so that it alone fails and the others go on.

When vLLM's engine dies, every request it held fails at once and nothing says which one caused
it. Each request in flight at a crash takes a strike (kept in Redis, so a retry by RQ or by
another worker still sees it) and is tried again once vLLM is healthy, but only one such suspect
at a time on this runner: a request that crashes the engine again is then almost surely the
cause, since it was the only suspect in flight. A second strike fails the request for good, with
an error saying so, instead of trying it into the same crash again; every other suspect has had
its one more try. Fresh requests are not held back meanwhile.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

STRIKES_TO_FAIL = 2
_STRIKE_TTL_SECONDS = 24 * 3600
_TURN_SECONDS = 30  # the suspects' turn lock lapses this long after its holder died; renewed meanwhile

CRASH_ERROR = ("the model server's engine crashed twice while answering this request, the second time with no other"
               " suspect request in flight: it is not tried again, so that it cannot take the model server down"
               " for everyone else. Change the request (its parameters, its length), or tell the operator: the"
               " runner's vllm.log holds the cause")


def _strikes_key(interaction_id: str) -> str:
    return f"helix:engine-crash-strikes:{interaction_id}"


def strike(redis: Redis, interaction_id: str) -> int:
    """Counts a crash this request was in flight for; returns how many it has seen. Redis away
    (it can fail with the engine): counted as its first, so the request is tried again."""
    try:
        with redis.pipeline(transaction=True) as pipe:
            pipe.incr(_strikes_key(interaction_id))
            pipe.expire(_strikes_key(interaction_id), _STRIKE_TTL_SECONDS)
            return int(pipe.execute()[0])
    except RedisError as err:
        log.warning("engine-crash strike of %s not counted: %s", interaction_id, err)
        return 1


def strikes(redis: Redis, interaction_id: str) -> int:
    """How many crashes the request was in flight for (0 when Redis cannot say: a reply must not
    wait on Redis, which the reconciler recovers from on its own)."""
    try:
        return int(redis.get(_strikes_key(interaction_id)) or 0)
    except RedisError as err:
        log.warning("engine-crash strikes of %s unknown: %s", interaction_id, err)
        return 0


def forget(redis: Redis, interaction_id: str) -> None:
    """The request finished (answered or failed): a later run of it starts with a clean slate."""
    try:
        redis.delete(_strikes_key(interaction_id))
    except RedisError as err:  # a left-over key lapses by itself
        log.warning("could not forget the engine-crash strikes of %s: %s", interaction_id, err)


@contextlib.contextmanager
def suspect_turn(redis: Redis, runner_id: str, stop: threading.Event) -> Iterator[bool]:
    """Waits for this runner's one suspect slot (yields False if `stop` was set first) and holds
    it while the block runs, renewing it so that only a dead holder's slot lapses."""
    lock = redis.lock(f"helix:engine-suspect:{runner_id}", timeout=_TURN_SECONDS, sleep=0.2, thread_local=False)
    try:
        while not lock.acquire(blocking=True, blocking_timeout=1.0):
            if stop.is_set():
                yield False
                return
    except RedisError as err:  # no turn to be had: tried anyway, as before this guard existed
        log.warning("engine-suspect turn of %s unavailable: %s", runner_id, err)
        yield True
        return
    released = threading.Event()

    def renew() -> None:
        while not released.wait(_TURN_SECONDS / 3):
            try:
                lock.reacquire()
            except Exception as err:
                log.warning("could not renew the engine-suspect turn of %s: %s", runner_id, err)

    threading.Thread(target=renew, name="suspect-turn", daemon=True).start()
    try:
        yield True
    finally:
        released.set()
        try:
            lock.release()
        except Exception as err:  # lapsed already: the next suspect has it
            log.warning("engine-suspect turn of %s was already gone: %s", runner_id, err)
