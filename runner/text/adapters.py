"""LoRA adapters on the warm vLLM server: a fine-tuned session is served by the base model with its
adapter loaded at run time (multi-LoRA), never by a second model instance.

An adapter's files are fetched from the control plane once per runner and kept on disk; the load
request is repeated before every use (vLLM answers in milliseconds, and a vLLM restarted by the
supervisor has forgotten its adapters). The adapter's name is derived from its folder, which
comes from the session's own row: a job can only name the adapter its session is served with.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from pathlib import Path

import requests

from runner.config import TEXT_ADAPTERS
from runner.state import metrics
from shared.finetune import ADAPTER_FILES, adapter_name

log = logging.getLogger(__name__)
# A text worker process runs many chats at once: one download per adapter, not one per chat.
_fetching: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


class AdapterError(Exception):
    """vLLM refused the adapter (rank above its limit, a base model it does not fit)."""


def cache_dir(work_dir: str) -> Path:
    """Where a runner keeps text adapters: the chat jobs that serve them and the fine-tune that
    trained one both put them here, so a fresh adapter is served without a download."""
    return Path(work_dir) / TEXT_ADAPTERS


def fetch(client, session_id: str, lora_dir: str, cache_dir: Path, files: tuple[str, ...] = ADAPTER_FILES) -> Path:
    """The adapter's files in the runner's cache, downloaded through the control plane if new."""
    folder = cache_dir / adapter_name(lora_dir)
    with _fetching[folder.name]:
        if all((folder / name).exists() for name in files):
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        for name in files:
            data = client.download(session_id, f"{lora_dir}/{name}")
            tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}"
            tmp.write_bytes(data)
            tmp.replace(folder / name)
    return folder


def load(vllm_url: str, name: str, folder: Path, http: requests.Session | None = None) -> str:
    """Makes `name` callable as a model on the vLLM server; returns it."""
    r = (http or requests).post(f"{vllm_url}/v1/load_lora_adapter", timeout=(5, 120),
                                json={"lora_name": name, "lora_path": str(folder)})
    if r.ok:
        metrics.ADAPTER_LOADS.labels("text").inc()
        return name
    if r.status_code == 400 and "already" in r.text.lower():
        return name
    raise AdapterError(f"the model server refused adapter {name}: {r.status_code} {r.text[:300]}")


def ensure(client, vllm_url: str, session_id: str, lora_dir: str, cache_dir: Path,
           http: requests.Session | None = None) -> str:
    return load(vllm_url, adapter_name(lora_dir), fetch(client, session_id, lora_dir, cache_dir), http)
