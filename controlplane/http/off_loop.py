"""CPU-heavy work (decoding uploaded images) kept off the gevent event loop.

Under gunicorn's gevent worker every request of a process shares one OS thread: a few seconds of
Pillow decoding there stall every other request of that worker (runner reports, other users'
streams and polls) and can get the worker killed by gunicorn's timeout. `run_off_loop` runs the
work in one of a few real OS threads of gevent's thread pool; the calling greenlet waits while
the loop serves everyone else (Pillow's decoders release the GIL while they decode). Outside
gevent (the in-process app of the tests, a plain thread per request) it simply calls the function.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

from gevent import monkey

T = TypeVar("T")

# Heavy checks running at once in one control-plane process; more wait their turn. Each holds at
# most one decoded image (HELIX_MAX_FINETUNE_IMAGE_PIXELS x 4 bytes, 160 MB at the default), and
# more threads than cores would not finish sooner.
THREADS = 2

_pool = None
_pool_pid = 0


def run_off_loop(func: Callable[..., T], *args) -> T:
    """func(*args), run outside the event loop under gevent; its exception is raised here."""
    if not monkey.is_module_patched("threading"):
        return func(*args)
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():  # a forked worker makes its own
        from gevent.threadpool import ThreadPool

        _pool, _pool_pid = ThreadPool(THREADS), os.getpid()
    return _pool.apply(func, args)
