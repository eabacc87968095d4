"""A streamed model request that stops as soon as its job must stop, not at its next token.

The request is read in a helper thread while the job's thread waits on what it yields and on the
job's watch (runner/job_watch.py). Once the watch says stop, the job's thread returns at once and
the HTTP connection to the model server is shut: vLLM sees its client leave and aborts the
request, freeing its KV cache. A request whose answer has not even begun (a model server that is
stuck) is closed as soon as its response arrives.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Protocol

from runner.job_watch import StopSignal


class Abortable(Protocol):
    """A streamed response that any thread may abort (runner.text.generation.Reply: it shuts the
    response's socket, so a read blocked on it returns at once)."""

    def abort(self) -> None: ...


OpenStream = Callable[[Callable[[Abortable], None]], Iterator[str]]


def abortable(open_stream: OpenStream, watch: StopSignal, poll: float = 1.0,
              pause: StopSignal | None = None) -> Iterator[str]:
    """Yields what `open_stream(on_response)` yields, until it ends or `watch` says stop (then it
    returns early: the caller looks at `watch.stop`). `open_stream` calls `on_response` with its
    HTTP response as soon as it has one. Errors of the request are raised in the caller's thread.

    `pause` ends the request too, but gently: what was read before the connection closed is still
    yielded, and the error its closing caused is not raised (the caller looks at `pause.stop`)."""
    items: queue.SimpleQueue = queue.SimpleQueue()
    lock = threading.Lock()
    held: dict[str, Abortable | None] = {"response": None}
    aborted = threading.Event()  # the request is to end
    left = threading.Event()  # the job's thread reads no more

    def on_response(response: Abortable) -> None:
        with lock:
            held["response"] = response
            if aborted.is_set():
                response.abort()

    def abort() -> None:
        with lock:
            aborted.set()
            if held["response"] is not None:
                held["response"].abort()

    def read() -> None:
        try:
            for item in open_stream(on_response):
                if left.is_set():
                    return
                items.put((True, item))
            items.put((False, None))
        except BaseException as err:  # handed to the job's thread
            items.put((False, err))

    threading.Thread(target=read, name="model-stream", daemon=True).start()
    watch.on_stop(lambda: (left.set(), abort(), items.put((True, None))))  # abort, and wake the job's thread
    if pause is not None:
        pause.on_stop(abort)
    ended = False  # the request ended by itself: nothing to abort
    try:
        while True:
            try:
                ok, item = items.get(timeout=poll)
            except queue.Empty:
                if watch.stop.is_set():
                    return
                continue
            if watch.stop.is_set():
                return
            if ok:
                yield item
                continue
            ended = True
            if item is not None and not (pause is not None and pause.stop.is_set()):
                raise item
            return
    finally:
        left.set()
        if not ended:  # stopped, or the caller left early: the model server stops generating too
            abort()
