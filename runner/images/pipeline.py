"""The text-to-image model, loaded once and kept warm by the runner's image worker.

Only diffusers and torch here: no queue, no HTTP. The worker builds one ``ImagePipeline`` at
start-up and calls ``generate`` for every job, so ``load_count`` stays at 1 for its lifetime.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from PIL import Image


class ImagePipeline:
    """A diffusers pipeline (Stable Diffusion, SDXL, or the tiny test model) on one device.

    ``self.pipe`` is the diffusers pipeline itself, kept so LoRA weights can be loaded into it
    later without reloading the base model.
    """

    load_count = 0  # pipeline loads in this process, across all instances

    def __init__(self, model_path: str, device: str | None = None):
        from diffusers import DiffusionPipeline

        self.model_path = model_path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Half precision only where it is fast and supported; CPU kernels want float32.
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32

        started = time.monotonic()
        self.pipe = DiffusionPipeline.from_pretrained(model_path, dtype=self.dtype)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.load_seconds = time.monotonic() - started
        ImagePipeline.load_count += 1

        # The VAE shrinks images by this factor; sizes must be multiples of it.
        self.size_multiple = int(getattr(self.pipe, "vae_scale_factor", 8))
        # The size the UNet was trained at: 64 for the tiny model, 512 for SD 1.5, 1024 for SDXL.
        self.default_size = int(self.pipe.unet.config.sample_size) * self.size_multiple
        # A tiny random model gains nothing from many steps; real models need ~30.
        self.default_steps = 4 if self.default_size <= 128 else 30
        self.default_guidance = 5.0 if "XL" in type(self.pipe).__name__ else 7.5

    def generate(
        self,
        prompt: str,
        *,
        num_images: int = 1,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[Image.Image]:
        """Make ``num_images`` images for ``prompt``.

        The same seed, prompt and parameters give identical pixels on the same device.
        ``on_step(step, total)`` is called after each denoising step, step counting from 1;
        total is the scheduler's real number of steps, which can differ from ``steps``.
        """
        width = width or self.default_size
        height = height or self.default_size
        for name, value in (("width", width), ("height", height)):
            if value <= 0 or value % self.size_multiple:
                raise ValueError(f"{name} must be a positive multiple of {self.size_multiple}")
        if num_images < 1:
            raise ValueError("num_images must be at least 1")

        generator = None
        if seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)

        def step_end(pipe, step_index, timestep, callback_kwargs):
            if on_step is not None:
                on_step(step_index + 1, pipe.num_timesteps)
            return callback_kwargs  # diffusers uses what we return as the new latents etc.

        result = self.pipe(
            prompt=prompt,
            num_images_per_prompt=num_images,
            width=width,
            height=height,
            num_inference_steps=steps or self.default_steps,
            guidance_scale=self.default_guidance if guidance is None else guidance,
            generator=generator,
            callback_on_step_end=step_end,
            output_type="pil",
        )
        return list(result.images)
