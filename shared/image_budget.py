"""An image model's work budget: how much one request may ask of the runners that serve it.

A request's work is width × height × steps × num_images. Each runner measures what that costs
on its pipeline (runner/images/calibration.py) and announces it in its registration `info`; the
control plane refuses a request over the budget with a 400 at once and sizes the job's timeout
from its work, and the runner holds every job it takes to its own budget as well (a job queued
before any runner announced one). Both sides use this arithmetic, so they agree.

seconds ≈ megapixels × num_images × (steps × seconds_per_megapixel_step + seconds_per_megapixel)

The per-pixel cost of a step grows with the image (attention is quadratic in its pixels), so the
runner measures it at its largest size, `max_pixels`: the estimate is then an upper bound for
every size it accepts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

# The runner stops a job at TIMEOUT_MARGIN × its estimate + RUNNER_SLACK_SECONDS; RQ's timeout,
# set by the control plane, is later still, so the runner's own error (which names the cause)
# is what users see, and RQ's is the backstop for a runner that hangs.
TIMEOUT_MARGIN = 3.0
RUNNER_SLACK_SECONDS = 10.0
QUEUE_SLACK_SECONDS = 60.0

_INFO_PREFIX = "image_"
# info key -> (whole number?, lowest, highest): what a runner may announce.
INFO_RANGES: dict[str, tuple[bool, float, float]] = {
    "image_max_pixels": (True, 64, 2**26),
    "image_max_seconds": (False, 1, 86400),
    "image_seconds_per_megapixel_step": (False, 1e-6, 1e6),
    "image_seconds_per_megapixel": (False, 0, 1e6),
    "image_default_size": (True, 8, 8192),
    "image_default_steps": (True, 1, 1000),
}


def _mp(width: int, height: int) -> float:
    return width * height / 1e6


@dataclass(frozen=True)
class ImageBudget:
    max_pixels: int                    # largest width × height of one image
    max_seconds: float                 # the longest one request may keep the image worker
    seconds_per_megapixel_step: float  # one denoising step of a 1-megapixel image, at max_pixels
    seconds_per_megapixel: float       # per image besides its steps: prompt encoding, VAE decoding
    default_size: int                  # what width and height are when the request names none
    default_steps: int                 # likewise for steps

    def to_info(self) -> dict[str, Any]:
        return {_INFO_PREFIX + k: v for k, v in asdict(self).items()}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "ImageBudget | None":
        """The budget in a runner's announced info; None if it announced none (or part of one)."""
        if not all(isinstance(info.get(k), (int, float)) for k in INFO_RANGES):
            return None
        return cls(**{k[len(_INFO_PREFIX):]: info[k] for k in INFO_RANGES})

    @classmethod
    def strictest(cls, budgets: Iterable["ImageBudget"]) -> "ImageBudget | None":
        """Any of a model's runners may take a job: the smallest limits and the slowest costs."""
        budgets = list(budgets)
        if not budgets:
            return None
        return cls(max_pixels=min(b.max_pixels for b in budgets),
                   max_seconds=min(b.max_seconds for b in budgets),
                   seconds_per_megapixel_step=max(b.seconds_per_megapixel_step for b in budgets),
                   seconds_per_megapixel=max(b.seconds_per_megapixel for b in budgets),
                   default_size=max(b.default_size for b in budgets),
                   default_steps=max(b.default_steps for b in budgets))

    def resolve(self, width: int | None, height: int | None, steps: int | None) -> tuple[int, int, int]:
        return width or self.default_size, height or self.default_size, steps or self.default_steps

    def seconds(self, width: int, height: int, steps: int, num_images: int) -> float:
        """The estimated time of one request on the slowest of the runners."""
        return _mp(width, height) * num_images * (
            steps * self.seconds_per_megapixel_step + self.seconds_per_megapixel)

    def max_steps(self, width: int, height: int, num_images: int) -> int:
        """The most steps that fit at this size and count (0: none do)."""
        per_step = _mp(width, height) * num_images * self.seconds_per_megapixel_step
        room = self.max_seconds - _mp(width, height) * num_images * self.seconds_per_megapixel
        return max(0, math.floor(room / per_step)) if per_step > 0 else 0

    def max_megapixel_steps(self) -> float:
        """The budget as width × height × steps × num_images, in millions (for messages)."""
        return self.max_seconds / (self.seconds_per_megapixel_step + self.seconds_per_megapixel)

    def refusal(self, model: str, width: int | None, height: int | None, steps: int | None,
                num_images: int | None) -> str | None:
        """Why a request does not fit, saying how to make it fit; None if it fits."""
        width, height, steps = self.resolve(width, height, steps)
        num_images = num_images or 1
        side = math.isqrt(self.max_pixels) // 8 * 8
        if width * height > self.max_pixels:
            return (f"model {model!r} makes images of at most {self.max_pixels} pixels (for example"
                    f" {side}x{side}) on its runners; {width}x{height} is {width * height}: ask for a"
                    " smaller width and height")
        seconds = self.seconds(width, height, steps, num_images)
        if seconds <= self.max_seconds:
            return None
        fits = []
        if (most := self.max_steps(width, height, num_images)) >= 1:
            fits.append(f"at most {most} steps at this size")
        if (images := max((k for k in range(1, num_images)
                           if self.seconds(width, height, steps, k) <= self.max_seconds), default=0)):
            fits.append(f"{images} image(s) at {steps} steps")
        fits.append("a smaller width and height")
        return (f"{width}x{height} x {steps} steps x {num_images} image(s) is about {seconds:.0f} s of work"
                f" for model {model!r}; its runners take at most {self.max_seconds:.0f} s per request"
                f" (about {self.max_megapixel_steps():.1f} million pixel-steps, width x height x steps x"
                f" num_images, at {self.seconds_per_megapixel_step:.3g} s per megapixel-step): ask for "
                + ", or ".join(fits))

    def runner_deadline(self, width: int, height: int, steps: int, num_images: int) -> float:
        """When the runner stops a job that runs far past its estimate (the machine is loaded)."""
        return TIMEOUT_MARGIN * self.seconds(width, height, steps, num_images) + RUNNER_SLACK_SECONDS

    def job_timeout(self, width: int | None, height: int | None, steps: int | None,
                    num_images: int | None) -> int:
        """RQ's timeout for the job: after the runner's own deadline, never hours for seconds of work."""
        width, height, steps = self.resolve(width, height, steps)
        return math.ceil(self.runner_deadline(width, height, steps, num_images or 1) + QUEUE_SLACK_SECONDS)


def check_info(info: dict[str, Any]) -> str | None:
    """What is wrong with the image budget in a runner's info (None: nothing, or none announced)."""
    for key, (whole, low, high) in INFO_RANGES.items():
        if key not in info:
            continue
        value = info[key]
        if type(value) is bool or not isinstance(value, (int, float)) or (whole and type(value) is not int) \
                or not low <= value <= high:
            kind = "a whole number" if whole else "a number"
            return f"info {key} must be {kind} from {low:g} to {high:g}"
    present = [k for k in INFO_RANGES if k in info]
    if present and len(present) < len(INFO_RANGES):
        return "an image budget names all of " + ", ".join(INFO_RANGES)
    return None
