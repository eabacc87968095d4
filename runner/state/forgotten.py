"""Deleting the adapters the control plane says were forgotten (their sessions or users were
deleted): from this runner's caches on disk (text and image) and from vLLM. How far it got is kept
in the work folder, so a restarted runner is not told the whole list again.

Nothing here imports prometheus_client (runner.text.adapters does): the supervisor holds one
before its metrics folder is set up."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import requests

from runner.config import IMAGE_ADAPTERS, TEXT_ADAPTERS

log = logging.getLogger(__name__)
SEEN_FILE = "forgotten-seen"


class ForgottenAdapters:
    def __init__(self, work_dir: str):
        self.work_dir = Path(work_dir)
        self.caches = (self.work_dir / TEXT_ADAPTERS, self.work_dir / IMAGE_ADAPTERS)
        # The last forgotten adapter this runner deleted (0: none yet, or its work folder is new).
        try:
            self.seen = int((self.work_dir / SEEN_FILE).read_text())
        except (OSError, ValueError):
            self.seen = 0

    def delete(self, names: list[str], through: int, vllm_url: str = "") -> None:
        """Deletes these adapters wherever this runner keeps them, then records `through`."""
        for name in names:
            if not name.startswith("lora-") or "/" in name or name != Path(name).name:
                log.warning("ignored a forgotten adapter with an unexpected name: %r", name[:80])
                continue
            served = (self.caches[0] / name).exists()  # vLLM loads text adapters from that cache alone
            for cache in self.caches:
                shutil.rmtree(cache / name, ignore_errors=True)
            if vllm_url and served:
                try:  # 404 when vLLM never loaded it (or lost it with a restart)
                    requests.post(f"{vllm_url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=10)
                except requests.RequestException as err:
                    log.warning("vLLM did not unload forgotten adapter %s: %s", name, err)
        if names:
            log.info("deleted %d forgotten adapters (through %d)", len(names), through)
        if through != self.seen:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.work_dir / f".{SEEN_FILE}"
            tmp.write_text(str(through))
            tmp.replace(self.work_dir / SEEN_FILE)
            self.seen = through
