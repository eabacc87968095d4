"""Runner settings from environment variables (documented in the README)."""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

from shared.finetune import DOCUMENT_MAX_INFLATED_BYTES

# The adapters' caches in a runner's work folder (HELIX_RUNNER_WORK_DIR), by the adapters' names,
# and its training runs, by their interactions' ids.
TEXT_ADAPTERS, IMAGE_ADAPTERS, TRAINING = "adapters", "image-adapters", "training"
from shared.memory import needs_from_env, parse_size
from shared.settings import SettingError, env_float, env_int, env_json_object


@dataclass
class RunnerConfig:
    api_url: str                 # HELIX_API_URL: the control plane, e.g. http://127.0.0.1:8080
    token: str                   # HELIX_RUNNER_TOKEN: from `helix runners token NAME`
    redis_url: str               # REDIS_URL
    runner_id: str               # HELIX_RUNNER_ID (default: host name and pid)
    text_model: str = ""         # HELIX_TEXT_MODEL: the name sessions ask for; empty = no text
    text_model_path: str = ""    # HELIX_TEXT_MODEL_PATH: local directory (or hub id on a GPU box)
    embedding_model_path: str = ""  # HELIX_EMBEDDING_MODEL_PATH: the sentence-embedding model of retrieval
    # (default: all-minilm-l6-v2 beside the text model's directory, where `make setup` puts it)
    image_model: str = ""        # HELIX_IMAGE_MODEL: empty = no image worker
    image_model_path: str = ""   # HELIX_IMAGE_MODEL_PATH
    image_max_pixels: int = 0    # HELIX_IMAGE_MAX_PIXELS: largest width x height (0: twice the native size each way)
    image_max_seconds: float = 300  # HELIX_IMAGE_MAX_SECONDS: the longest one image request may take
    image_seconds_per_megapixel_step: float = 0  # HELIX_IMAGE_SECONDS_PER_MEGAPIXEL_STEP: 0 = measure at start-up
    text_workers: int = 128      # HELIX_TEXT_WORKERS: text jobs in flight at once on the one vLLM (its own
    # batch cap on a CPU; more with a GPU)
    # (threads of one worker process, one RQ worker each)
    text_reserve_workers: int = 8  # HELIX_TEXT_RESERVE_WORKERS: more threads than that, never counted as
    # workers by fair share: another user's new chat starts on one at once while HELIX_TEXT_WORKERS are busy
    shared_batch_width: int = -1  # HELIX_SHARED_BATCH_WIDTH: the batch while a light user shares it with
    # others (runner/text/fair_batch.py); 0: off; -1: 4 on a CPU engine, off on a GPU
    max_tokens: int = 512        # HELIX_MAX_TOKENS: default reply length cap
    max_model_len: int = 2048    # HELIX_MAX_MODEL_LEN: context passed to vLLM
    vllm_port: int = 0           # HELIX_VLLM_PORT: 0 picks a free loopback port
    vllm_args: str = ""          # HELIX_VLLM_ARGS: extra `vllm serve` arguments
    kv_cache_gib: int = 1        # HELIX_VLLM_KV_CACHE_GIB: CPU KV cache (VLLM_CPU_KVCACHE_SPACE)
    delta_interval: float = 0.1  # HELIX_DELTA_INTERVAL: seconds between streamed text deltas (via Redis)
    persist_interval: float = 30.0  # HELIX_PERSIST_INTERVAL: seconds between stores of a reply's text so far
    # (status polls and event streams read the streamed text from Redis, not the stored one)
    sampling_extra: dict = field(default_factory=dict)  # HELIX_SAMPLING_EXTRA: JSON added to every
    # chat request, e.g. {"repetition_penalty": 1.1} or {"ignore_eos": true}
    log_dir: str = ""            # HELIX_RUNNER_LOG_DIR: vLLM's own output goes to vllm.log there
    register_interval: float = 5  # HELIX_REGISTER_INTERVAL: seconds between "still here" reports with
    # the runner's state (the control plane shows a runner as gone after HELIX_RUNNER_GONE_SECONDS, 15)
    metrics_port: int = 0        # HELIX_RUNNER_METRICS_PORT: Prometheus metrics served here; 0 = off
    metrics_addr: str = "0.0.0.0"  # HELIX_RUNNER_METRICS_ADDR: the address that port listens on
    finetune_workers: int = 1    # HELIX_FINETUNE_WORKERS: training runs at once (0: this runner trains nothing)
    image_finetune_workers: int = 1  # HELIX_IMAGE_FINETUNE_WORKERS: image LoRA runs at once (0: none)
    work_dir: str = ""           # HELIX_RUNNER_WORK_DIR: adapters and checkpoints (default: runner-work/<id>
    # in the installation's state folder, HELIX_STATE_DIR or .helix, never a folder another installation shares)
    qa_api_url: str = ""         # HELIX_QA_API_URL: OpenAI-compatible server that writes the questions
    qa_api_key: str = ""         # HELIX_QA_API_KEY   (default: this runner's own vLLM and model)
    qa_model: str = ""           # HELIX_QA_MODEL
    qa_concurrency: int = 32     # HELIX_QA_CONCURRENCY: question requests in flight at once
    dataprep_max_document_chars: int = 1_000_000  # HELIX_DATAPREP_MAX_DOCUMENT_CHARS: text kept of one
    # document (the rest is cut, and the document's report says so)
    dataprep_max_document_bytes: int = DOCUMENT_MAX_INFLATED_BYTES  # HELIX_DATAPREP_MAX_DOCUMENT_BYTES: most a
    # document may take once inflated (a .docx's members together) or as text/HTML
    dataprep_readers: int = 2    # HELIX_DATAPREP_READERS: documents read and chunked at once on this runner
    url_allow_private: bool = False  # HELIX_URL_ALLOW_PRIVATE=1: fetch URLs on private addresses too
    memory_limit_bytes: int = 0  # HELIX_RUNNER_MEMORY_BYTES: most memory this runner counts as its own (0: all)
    memory_needs: dict = field(default_factory=lambda: needs_from_env({}))  # HELIX_MEMORY_NEEDS: declared needs (shared.memory)
    memory_recheck_seconds: float = 2.0  # HELIX_MEMORY_RECHECK_SECONDS: a worker that left a job queued
    # for want of memory waits this long before it takes a job again

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "RunnerConfig":
        env = dict(os.environ if env is None else env)
        missing = [k for k in ("HELIX_API_URL", "HELIX_RUNNER_TOKEN", "REDIS_URL") if not env.get(k)]
        if missing:
            raise SystemExit("runner needs " + ", ".join(missing) + " in its environment")
        env.setdefault("HELIX_RUNNER_ID", f"{socket.gethostname()}-{os.getpid()}")
        config = cls(
            api_url=env["HELIX_API_URL"].rstrip("/"),
            token=env["HELIX_RUNNER_TOKEN"],
            redis_url=env["REDIS_URL"],
            runner_id=env["HELIX_RUNNER_ID"],
            text_model=env.get("HELIX_TEXT_MODEL", ""),
            text_model_path=env.get("HELIX_TEXT_MODEL_PATH", ""),
            embedding_model_path=env.get("HELIX_EMBEDDING_MODEL_PATH", "") or _beside(
                env.get("HELIX_TEXT_MODEL_PATH", ""), "all-minilm-l6-v2"),
            image_model=env.get("HELIX_IMAGE_MODEL", ""),
            image_model_path=env.get("HELIX_IMAGE_MODEL_PATH", ""),
            image_max_pixels=env_int(env, "HELIX_IMAGE_MAX_PIXELS", 0),
            image_max_seconds=env_float(env, "HELIX_IMAGE_MAX_SECONDS", 300),
            image_seconds_per_megapixel_step=env_float(env, "HELIX_IMAGE_SECONDS_PER_MEGAPIXEL_STEP", 0),
            text_workers=env_int(env, "HELIX_TEXT_WORKERS", 128),
            text_reserve_workers=env_int(env, "HELIX_TEXT_RESERVE_WORKERS", 8),
            shared_batch_width=env_int(env, "HELIX_SHARED_BATCH_WIDTH", -1),
            max_tokens=env_int(env, "HELIX_MAX_TOKENS", 512),
            max_model_len=env_int(env, "HELIX_MAX_MODEL_LEN", 2048),
            vllm_port=env_int(env, "HELIX_VLLM_PORT", 0),
            vllm_args=env.get("HELIX_VLLM_ARGS", ""),
            kv_cache_gib=env_int(env, "HELIX_VLLM_KV_CACHE_GIB", 1),
            delta_interval=env_float(env, "HELIX_DELTA_INTERVAL", 0.1),
            persist_interval=env_float(env, "HELIX_PERSIST_INTERVAL", 30.0),
            sampling_extra=env_json_object(env, "HELIX_SAMPLING_EXTRA"),
            log_dir=env.get("HELIX_RUNNER_LOG_DIR", ""),
            register_interval=env_float(env, "HELIX_REGISTER_INTERVAL", 5),
            metrics_port=env_int(env, "HELIX_RUNNER_METRICS_PORT", 0),
            metrics_addr=env.get("HELIX_RUNNER_METRICS_ADDR", "0.0.0.0"),
            finetune_workers=env_int(env, "HELIX_FINETUNE_WORKERS", 1),
            image_finetune_workers=env_int(env, "HELIX_IMAGE_FINETUNE_WORKERS", 1),
            work_dir=env.get("HELIX_RUNNER_WORK_DIR", "")
            or os.path.join(os.path.abspath(env.get("HELIX_STATE_DIR", ".helix")), "runner-work", runner_id_safe(env)),
            qa_api_url=env.get("HELIX_QA_API_URL", "").rstrip("/"),
            qa_api_key=env.get("HELIX_QA_API_KEY", ""),
            qa_model=env.get("HELIX_QA_MODEL", ""),
            qa_concurrency=env_int(env, "HELIX_QA_CONCURRENCY", 32),
            dataprep_max_document_chars=env_int(env, "HELIX_DATAPREP_MAX_DOCUMENT_CHARS", 1_000_000),
            dataprep_max_document_bytes=_size(env, "HELIX_DATAPREP_MAX_DOCUMENT_BYTES") or DOCUMENT_MAX_INFLATED_BYTES,
            dataprep_readers=env_int(env, "HELIX_DATAPREP_READERS", 2),
            url_allow_private=env.get("HELIX_URL_ALLOW_PRIVATE", "").lower() in ("1", "true", "yes"),
            memory_limit_bytes=_size(env, "HELIX_RUNNER_MEMORY_BYTES"),
            memory_needs=needs_from_env(env),
            memory_recheck_seconds=env_float(env, "HELIX_MEMORY_RECHECK_SECONDS", 2.0),
        )
        if config.dataprep_max_document_chars < 1 or config.dataprep_readers < 1:
            raise SettingError("HELIX_DATAPREP_MAX_DOCUMENT_CHARS and HELIX_DATAPREP_READERS must be at least 1")
        if not 0.05 <= config.memory_recheck_seconds <= 600:
            raise SettingError(f"HELIX_MEMORY_RECHECK_SECONDS must be from 0.05 to 600, got {config.memory_recheck_seconds:g}")
        if config.image_max_pixels and not 64 <= config.image_max_pixels <= 2**26:
            raise SettingError(f"HELIX_IMAGE_MAX_PIXELS must be from 64 to {2**26} (or 0: twice the model's"
                               f" native size each way), got {config.image_max_pixels}")
        if not 0 < config.register_interval <= 3600:
            raise SettingError(f"HELIX_REGISTER_INTERVAL must be from 0 to 3600 seconds, got {config.register_interval:g}")
        if not 0 <= config.metrics_port <= 65535:
            raise SettingError(f"HELIX_RUNNER_METRICS_PORT must be a port from 1 to 65535, or 0 (off), got {config.metrics_port}")
        if not 1 <= config.image_max_seconds <= 86400:
            raise SettingError(f"HELIX_IMAGE_MAX_SECONDS must be from 1 to 86400, got {config.image_max_seconds:g}")
        if not 0 <= config.image_seconds_per_megapixel_step <= 1e6:
            raise SettingError("HELIX_IMAGE_SECONDS_PER_MEGAPIXEL_STEP must be from 0 (measure it) to 1000000,"
                               f" got {config.image_seconds_per_megapixel_step:g}")
        return config


def _beside(model_path: str, name: str) -> str:
    """The directory `name` next to a local model's directory, if that is where a model is."""
    return os.path.join(os.path.dirname(model_path.rstrip("/")), name) if os.path.isdir(model_path) else ""


def _size(env: dict[str, str], name: str) -> int:
    raw = env.get(name, "").strip()
    try:
        return parse_size(raw) if raw else 0
    except ValueError as err:
        raise SettingError(f"{name}: {err}") from None


def runner_id_safe(env: dict[str, str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", env["HELIX_RUNNER_ID"])[:100]
