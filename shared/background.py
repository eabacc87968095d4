"""A daemon thread that does one piece of work every so often, whatever the work raises."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)


def run_every(interval: float, name: str, work: Callable[[], object]) -> threading.Thread:
    """Runs `work` every `interval` seconds (the first after one interval) on a daemon thread named
    `name`; a pass that fails is logged and the next one runs as planned."""
    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                work()
            except Exception:
                log.warning("%s: a pass failed", name, exc_info=True)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
