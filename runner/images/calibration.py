"""What this runner's image pipeline can do: measured once at start-up, announced to the control plane.

The image worker times a few denoising steps at the largest size it will accept (the per-pixel
cost of a step grows with the image, so that is the worst case) and turns them into an
`ImageBudget` (shared/image_budget.py). The worker writes it to a file in the runner's work
folder; the supervisor announces it with the runner's registration, so the control plane refuses
requests over it at once.

It also measures how late a stop can land at that size (the longest stretch between two
interruption checks, runner/images/interruption.py) and warns when that is over STOP_TARGET_SECONDS.
It does not shrink the size on its own: on a busy machine that stretch is mostly time spent
waiting for a core, and the limit would follow the neighbours' load rather than the pipeline.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from runner.config import RunnerConfig
from shared.image_budget import ImageBudget

log = logging.getLogger(__name__)

STOP_TARGET_SECONDS = 0.5
# With HELIX_IMAGE_SECONDS_PER_MEGAPIXEL_STEP set, what an image costs besides its steps
# (prompt encoding, VAE decoding) is counted as this many steps.
EXTRA_STEPS_PER_IMAGE = 2.0
BUDGET_FILE = "image-budget.json"


def default_max_pixels(pipeline: Any) -> int:
    """Twice the model's native size each way: 128x128 for the tiny model, 1024x1024 for SD 1.5,
    2048x2048 for SDXL. Larger, these models repeat themselves and their cost explodes."""
    return (2 * pipeline.default_size) ** 2


def _side(pixels: int, multiple: int) -> int:
    return max(multiple, math.isqrt(pixels) // multiple * multiple)


def measure(pipeline: Any, side: int, steps: int = 5) -> dict[str, float]:
    """Times `steps` denoising steps of one side×side image; returns seconds per step, the rest
    of the call (encoding, decoding), and the longest stretch a stop would have waited."""
    from runner.images.interruption import interruptible  # torch: not in the supervisor, which only reads the file

    stamps: list[float] = []
    started = time.monotonic()
    with interruptible(pipeline.pipe, threading.Event()) as check:
        pipeline.generate("a calibration image", width=side, height=side, steps=steps, seed=0,
                          on_step=lambda step, total: stamps.append(time.monotonic()))
    ended = time.monotonic()
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))  # warm steps: the first has one-offs
    step = (gaps[(len(gaps) - 1) // 2] + gaps[len(gaps) // 2]) / 2  # the median: one busy moment is not the cost
    # Besides the steps: prompt encoding and one-offs before the first, decoding after the last.
    rest = max(0.0, stamps[0] - started - step) + (ended - stamps[-1])
    return {"side": side, "step": step, "rest": rest, "total": ended - started,
            "stop_latency": check.longest}


def calibrate(pipeline: Any, config: RunnerConfig) -> ImageBudget:
    multiple = pipeline.size_multiple
    max_pixels = config.image_max_pixels or default_max_pixels(pipeline)
    if config.image_seconds_per_megapixel_step > 0:
        per_step = config.image_seconds_per_megapixel_step
        log.info("image budget from HELIX_IMAGE_SECONDS_PER_MEGAPIXEL_STEP=%g (not measured)", per_step)
        return ImageBudget(max_pixels=max_pixels, max_seconds=config.image_max_seconds,
                           seconds_per_megapixel_step=per_step,
                           seconds_per_megapixel=EXTRA_STEPS_PER_IMAGE * per_step,
                           default_size=pipeline.default_size, default_steps=pipeline.default_steps)
    pipeline.generate("warm-up", steps=1, seed=0)  # one-off allocations are not the pipeline's cost
    side = _side(max_pixels, multiple)
    m = measure(pipeline, side)
    log.info("image pipeline at %dx%d: %.3f s a step, %.3f s besides the steps, a stop waits at most"
             " %.3f s", side, side, m["step"], m["rest"], m["stop_latency"])
    if m["stop_latency"] > STOP_TARGET_SECONDS:
        log.warning("a stop may wait up to %.1f s at %dx%d on this machine (or it was busy): a smaller"
                    " HELIX_IMAGE_MAX_PIXELS makes it shorter", m["stop_latency"], side, side)
    megapixels = side * side / 1e6
    return ImageBudget(max_pixels=max_pixels, max_seconds=config.image_max_seconds,
                       seconds_per_megapixel_step=round(m["step"] / megapixels, 6),
                       seconds_per_megapixel=round(m["rest"] / megapixels, 6),
                       default_size=pipeline.default_size, default_steps=pipeline.default_steps)


def save(config: RunnerConfig, budget: ImageBudget) -> None:
    path = Path(config.work_dir) / BUDGET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"model": config.image_model, "info": budget.to_info()}))
    tmp.replace(path)


def announced(config: RunnerConfig) -> dict[str, Any]:
    """The budget the image worker measured, for the supervisor's registration ({} until it has)."""
    try:
        saved = json.loads((Path(config.work_dir) / BUDGET_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return saved["info"] if saved.get("model") == config.image_model else {}


def forget(config: RunnerConfig) -> None:
    """Before a new image worker starts: a budget measured by an earlier one may not hold any more."""
    (Path(config.work_dir) / BUDGET_FILE).unlink(missing_ok=True)
