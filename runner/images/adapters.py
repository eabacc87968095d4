"""Session LoRAs on the warm image pipeline: an adapter is fetched once, loaded into the pipeline
by name (`load_lora_weights`, never a second pipeline) and kept for the session's next prompts;
it is active only while the job that asked for it runs, so the next job, another user's
included, gets the base model unless it names its own adapter.

The name comes from the adapter's folder (`lora_dir`, which holds the id of the session that
trained it), taken from the session's own row: a job can only use its session's adapter.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

from runner.state import metrics
from runner.text import adapters
from shared.image_finetune import ADAPTER_FILE, ADAPTER_FILES

log = logging.getLogger(__name__)


class ImageAdapters:
    """The adapters loaded into one pipeline, least recently used first."""

    def __init__(self, pipe, cache_dir: Path, max_loaded: int = 8):
        self.pipe = pipe
        self.cache_dir = cache_dir
        self.max_loaded = max_loaded
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.load_count = 0  # adapter loads into the pipeline (a cached one is not loaded again)
        self._lock = threading.Lock()  # one job at a time may change which adapter is active

    def _ensure(self, client, session_id: str, lora_dir: str) -> str:
        name = adapters.adapter_name(lora_dir)
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return name
        folder = adapters.fetch(client, session_id, lora_dir, self.cache_dir, files=ADAPTER_FILES)
        self.pipe.load_lora_weights(str(folder), weight_name=ADAPTER_FILE, adapter_name=name)
        self.load_count += 1
        metrics.ADAPTER_LOADS.labels("image").inc()
        self.loaded[name] = None
        while len(self.loaded) > self.max_loaded:  # GPU memory is not unlimited: drop the oldest
            oldest, _ = self.loaded.popitem(last=False)
            self.pipe.delete_adapters(oldest)
            log.info("image adapter %s unloaded (least recently used)", oldest)
        return name

    @contextlib.contextmanager
    def applied(self, client, session_id: str, lora_dir: str) -> Iterator[str]:
        """The session's adapter active for the duration of the block (none: the base model);
        afterwards no adapter is active, whatever happened inside."""
        with self._lock:
            if not lora_dir:
                self._deactivate()
                yield ""
                return
            name = self._ensure(client, session_id, lora_dir)
            try:
                self.pipe.enable_lora()
                self.pipe.set_adapters([name])
                yield name
            finally:
                self._deactivate()

    def _deactivate(self) -> None:
        if self.loaded:
            self.pipe.disable_lora()
