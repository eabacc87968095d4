"""One image LoRA training run, in a child process of the image fine-tune worker (a crash or an
out-of-memory kill takes this process, never the worker):

    python -m runner.training.image_lora SPEC.json

SPEC names the pipeline, the images with their captions, the hyperparameters, an output folder
and, to resume, a checkpoint folder. A LoRA on the UNet's attention projections learns to denoise
the images given their captions (the usual diffusers text-to-image LoRA recipe, for Stable
Diffusion 1.x/2.x and SDXL); images are resized and centre-cropped to the model's resolution.
Progress goes to stdout as JSON lines (`start`, `step`, `eval`, `checkpoint`, `done`), the same
vocabulary as the text trainer, so the worker reports both alike.

Each step's batch, noise and timesteps come from a generator seeded by the run's seed and the
step number alone, so a run resumed from a checkpoint takes the steps the lost one would have.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from shared.image_finetune import ADAPTER_FILE, SAMPLE_IMAGES, SAMPLE_SEED

# The attention projections of every transformer block: the diffusers LoRA recipes' choice.
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
# The fixed-noise loss (`eval` events) averages these timesteps, as fractions of the schedule.
EVAL_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)


def emit_json(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def prepare_image(path: str | Path, size: int) -> Image.Image:
    """The picture as its camera meant it (EXIF rotation applied), RGB, scaled so its shorter
    side is `size` and centre-cropped to a square."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def _pixels(image: Image.Image) -> torch.Tensor:
    """HWC uint8 to CHW in [-1, 1], what the VAE encodes."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float() / 127.5 - 1.0


def _is_xl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


class Conditioning:
    """Each caption encoded once (the text encoders are frozen): the UNet's cross-attention
    input, and for SDXL its pooled text embedding and size conditioning as well."""

    def __init__(self, pipe, captions: list[str], size: int, device, dtype):
        self.xl = _is_xl(pipe)
        with torch.no_grad():
            if self.xl:
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
                self.pooled = pooled.to(dtype)
                # original size, crop top-left, target size: the images were cropped to size x size.
                self.time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype)
            else:
                embeds, _ = pipe.encode_prompt(captions, device, 1, False)
        self.embeds = embeds.to(dtype)

    def unet_kwargs(self, indices: torch.Tensor) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.embeds[indices]}
        if self.xl:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled[indices],
                                           "time_ids": self.time_ids.repeat(len(indices), 1)}
        return kwargs


def _encode_images(pipe, images: list[Image.Image], device) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent distribution (mean, std) of each image, already scaled for the UNet. Encoded in
    float32: SDXL's VAE overflows in float16."""
    vae = pipe.vae
    dtype = vae.dtype
    if dtype != torch.float32:
        vae.to(dtype=torch.float32)
    means, stds = [], []
    with torch.no_grad():
        for image in images:
            dist = vae.encode(_pixels(image).unsqueeze(0).to(device)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    if dtype != torch.float32:
        vae.to(dtype=dtype)
    scale = vae.config.scaling_factor
    return torch.cat(means) * scale, torch.cat(stds) * scale


def _target(scheduler, latents, noise, timesteps):
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def _loss(unet, scheduler, cond: Conditioning, means, stds, indices, generator, timesteps=None):
    """The denoising loss of one batch: its latents sampled, noised at random (or given) timesteps."""
    device = means.device
    mean, std = means[indices], stds[indices]
    latents = mean + std * torch.randn(mean.shape, generator=generator).to(device)
    noise = torch.randn(mean.shape, generator=generator).to(device)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(indices),), generator=generator)
    timesteps = timesteps.to(device).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy.to(unet.dtype), timesteps, **cond.unet_kwargs(indices)).sample
    return F.mse_loss(prediction.float(), _target(scheduler, latents, noise, timesteps).float())


def fixed_noise_loss(unet, scheduler, cond: Conditioning, means, stds, seed: int) -> float:
    """The loss on every image at fixed timesteps and fixed noise: unlike the training loss (a
    random timestep each step), it falls steadily when the adapter learns the images."""
    total = 0.0
    with torch.no_grad():
        for fraction in EVAL_TIMESTEPS:
            generator = torch.Generator().manual_seed(seed + 7919)
            indices = torch.arange(len(means))
            t = torch.full((len(means),), int(fraction * (scheduler.config.num_train_timesteps - 1)))
            total += _loss(unet, scheduler, cond, means, stds, indices, generator, t).item()
    return total / len(EVAL_TIMESTEPS)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _lora_state(unet) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def save_checkpoint(unet, optimizer, step: int, folder: Path) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_lora_state(unet), str(tmp / "lora.safetensors"))
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp / "state.pt")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _load_checkpoint(unet, optimizer, folder: Path) -> int:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(unet, load_file(str(folder / "lora.safetensors")))
    state = torch.load(folder / "state.pt", weights_only=False, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def load_pipeline(model_path: str, device: str):
    """The pipeline to train on: float16 on CUDA (SDXL's recipe), float32 on a CPU."""
    from diffusers import DiffusionPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = DiffusionPipeline.from_pretrained(model_path, dtype=dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train(spec: dict[str, Any], emit: Callable[..., None] = emit_json, pipe=None) -> dict[str, Any]:
    """Trains, checkpoints, saves the adapter and the samples; returns the `done` event."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    hp = spec["hyperparameters"]
    seed = int(spec.get("seed", 0))
    torch.manual_seed(seed)
    device = spec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    if pipe is None:
        pipe = load_pipeline(spec["model_path"], device)
    half = pipe.unet.dtype == torch.float16
    accelerator = Accelerator(cpu=not device.startswith("cuda"), mixed_precision="fp16" if half else "no")
    unet = pipe.unet
    size = int(unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    images = [prepare_image(item["path"], size) for item in spec["images"]]
    captions = [item["caption"] for item in spec["images"]]
    means, stds = _encode_images(pipe, images, accelerator.device)
    cond = Conditioning(pipe, captions, size, accelerator.device, unet.dtype)

    for module in (pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), unet):
        if module is not None:
            module.requires_grad_(False)
    rank = int(hp["lora_rank"])
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES))
    if half:
        cast_training_params(unet, dtype=torch.float32)  # the adapter trains in float32
    if device.startswith("cuda"):
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(hp["learning_rate"]), weight_decay=1e-2)

    total_steps = int(hp["training_steps"])
    batch_size = min(int(hp["batch_size"]), len(images))
    step = 0
    resume = spec.get("resume_from")
    if resume and (Path(resume) / "state.pt").exists():
        step = _load_checkpoint(unet, optimizer, Path(resume))
    unet, optimizer = accelerator.prepare(unet, optimizer)
    emit("start", total_steps=total_steps, start_step=step, train_rows=len(images), resolution=size,
         batch_size=batch_size, trainable_parameters=sum(p.numel() for p in params))
    if step == 0:
        emit("eval", step=0, fixed_noise_loss=round(fixed_noise_loss(unet, scheduler, cond, means, stds, seed), 6))

    checkpoint_every = int(spec.get("checkpoint_every") or max(1, math.ceil(total_steps / 10)))
    eval_every = int(spec.get("eval_every") or checkpoint_every)
    output = Path(spec["output_dir"])
    started = time.monotonic()
    unet.train()
    while step < total_steps:
        generator = _step_generator(seed, step)
        indices = torch.randperm(len(images), generator=generator)[:batch_size]
        with accelerator.autocast():
            loss = _loss(unet, scheduler, cond, means, stds, indices, generator)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        emit("step", step=step, loss=round(loss.item(), 6), learning_rate=float(hp["learning_rate"]))
        if step % eval_every == 0 or step == total_steps:
            emit("eval", step=step, fixed_noise_loss=round(fixed_noise_loss(unet, scheduler, cond, means, stds, seed), 6))
        if step % checkpoint_every == 0 and step < total_steps:
            folder = output / f"checkpoint-{step}"  # a new folder each time: the worker takes it away
            save_checkpoint(accelerator.unwrap_model(unet), optimizer, step, folder)
            emit("checkpoint", step=step, path=str(folder))
    seconds = round(time.monotonic() - started, 2)

    unet = accelerator.unwrap_model(unet)
    unet.eval()
    adapter_dir = output / "adapter"
    from diffusers.utils import convert_state_dict_to_diffusers

    type(pipe).save_lora_weights(adapter_dir, unet_lora_layers=convert_state_dict_to_diffusers(_lora_state(unet)),
                                 weight_name=ADAPTER_FILE, safe_serialization=True)
    samples = make_samples(pipe, captions, output / "samples", size, int(spec.get("samples", SAMPLE_IMAGES)))
    done = {"adapter_dir": str(adapter_dir), "seconds": seconds, "steps": total_steps, "samples": samples}
    emit("done", **done)
    return done


def make_samples(pipe, captions: list[str], folder: Path, size: int, count: int) -> list[dict[str, Any]]:
    """One image for each of the first distinct captions, with the trained adapter, fixed seeds."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    steps = 4 if size <= 128 else 30  # the image worker's defaults for the tiny and real models
    for n, caption in enumerate(list(dict.fromkeys(captions))[:count]):
        generator = torch.Generator(pipe.device).manual_seed(SAMPLE_SEED + n)
        with torch.no_grad():
            image = pipe(prompt=caption, width=size, height=size, num_inference_steps=steps,
                         generator=generator, output_type="pil").images[0]
        path = folder / f"sample-{n}.png"
        image.save(path)
        samples.append({"path": str(path), "caption": caption, "seed": SAMPLE_SEED + n})
    return samples


def main() -> None:
    train(json.loads(Path(sys.argv[1]).read_text()))


if __name__ == "__main__":
    main()
