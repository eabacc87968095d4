"""Stopping a running diffusers pipeline within a fraction of a second, not at the end of a step.

diffusers looks for an interruption only between denoising steps, and one step of a large image
can take minutes on a CPU. Inside `interruptible(pipe, stop)` every sub-module call of the
pipeline's models (UNet, VAE, text encoders: hundreds of short calls per step) first checks
`stop` and raises `Interrupted` once another thread has set it; and scaled-dot-product
attention, the one operation that stays long inside a single sub-module at large sizes, runs in
slices of queries with the same check between them (same result: each query row is
independent). Nothing stays behind: the hooks are removed on the way out, and the attention
wrapper does nothing for a thread that is not inside `interruptible`.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

# Most multiply-adds in one slice of attention: about 0.05-0.2 s on one CPU core.
SLICE_WORK = 2**27


class Interrupted(Exception):
    """The stop event was set while the pipeline ran."""


class Checkpoint:
    """The check run before each sub-module call and attention slice. It also records the
    longest stretch of work between two checks: how late a stop can come (calibration reports it)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.last = time.monotonic()
        self.longest = 0.0
        self.calls = 0

    def __call__(self) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.last = now
        self.calls += 1
        if self.stop.is_set():
            raise Interrupted()


_local = threading.local()
_install_lock = threading.Lock()
_original_sdpa = F.scaled_dot_product_attention


def _sliced_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *args, **kwargs):
    check: Checkpoint | None = getattr(_local, "check", None)
    if check is None or query.dim() < 3 or query.device.type != "cpu" or attn_mask is not None or is_causal:
        # Not ours to slice. (On a GPU kernels run asynchronously: slicing would not make a stop
        # land sooner, and the hooks still check between sub-modules.)
        return _original_sdpa(query, key, value, attn_mask, dropout_p, is_causal, *args, **kwargs)
    rows_total, keys, dim = query.shape[-2], key.shape[-2], query.shape[-1]
    lead = query.numel() // (rows_total * dim)  # batch × heads
    rows = max(1, SLICE_WORK // max(1, lead * keys * dim))
    if rows >= rows_total:
        check()
        return _original_sdpa(query, key, value, None, dropout_p, is_causal, *args, **kwargs)
    parts = []
    for start in range(0, rows_total, rows):
        check()
        parts.append(_original_sdpa(query[..., start:start + rows, :], key, value, None, dropout_p,
                                    is_causal, *args, **kwargs))
    return torch.cat(parts, dim=-2)


def _install_sliced_attention() -> None:
    """diffusers' attention processors call F.scaled_dot_product_attention by attribute, so the
    wrapper is seen by every pipeline; it acts only in threads inside `interruptible`."""
    with _install_lock:
        if F.scaled_dot_product_attention is not _sliced_sdpa:
            F.scaled_dot_product_attention = _sliced_sdpa


def models_of(pipe: Any) -> list[torch.nn.Module]:
    """The torch models of a diffusers pipeline (its UNet, VAE, text encoders, adapters loaded into them)."""
    return [c for c in getattr(pipe, "components", {}).values() if isinstance(c, torch.nn.Module)]


@contextmanager
def interruptible(pipe: Any, stop: threading.Event) -> Iterator[Checkpoint]:
    """While inside, the pipeline's models raise `Interrupted` soon after `stop` is set."""
    check = Checkpoint(stop)
    _install_sliced_attention()

    def pre_hook(module, args):
        check()

    handles = [module.register_forward_pre_hook(pre_hook)
               for model in models_of(pipe) for module in model.modules()]
    outer = getattr(_local, "check", None)
    _local.check = check
    try:
        check()  # a job cancelled before it started does not start
        yield check
    finally:
        _local.check = outer
        for handle in handles:
            handle.remove()
