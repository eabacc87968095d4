"""The image LoRA trainer (runner/training/image_lora.py) on CUDA along SDXL's path, as the runner
runs it there (float16 pipeline, the adapter's weights in float32, mixed precision, gradient
checkpointing), on a tiny SDXL-shaped pipeline built on the spot from the tiny model's tokenizer,
VAE and scheduler (as tests/test_image_lora.py builds it): a check that the path runs on a GPU,
not a figure. Then one image with the adapter, on the image worker's pipeline (runner.images.pipeline
with runner.images.adapters), beside one without it.

    python3 -m bench.gpu_image_lora --out RESULT.json [--image IMAGE.png] [--steps 40] [--device cuda]

Writes what it found (losses, dtypes, times, the error if any) to RESULT.json; exits 1 on a failure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.paths import models_dir  # noqa: E402
from model_setup.tiny_models import build_tiny_sdxl  # noqa: E402


def striped(path: Path, size=(256, 320)) -> Path:
    """Top half red, bottom half blue."""
    from PIL import Image

    w, h = size
    image = Image.new("RGB", (w, h), (30, 30, 220))
    image.paste(Image.new("RGB", (w, h // 2), (220, 30, 30)), (0, 0))
    image.save(path)
    return path


def check(result: dict, tmp: Path, steps: int, device: str, image_out: Path | None) -> None:
    import diffusers
    import peft
    import torch

    from runner.images.adapters import ImageAdapters
    from runner.images.pipeline import ImagePipeline
    from runner.text import adapters
    from runner.training import image_lora
    from shared.image_finetune import ADAPTER_FILE

    result["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__}
    result["card"] = torch.cuda.get_device_name() if device.startswith("cuda") else device
    started = time.monotonic()
    path = build_tiny_sdxl(models_dir(), tmp / "tiny-sdxl")
    result["built_in_s"] = round(time.monotonic() - started, 2)

    # The trainer's own loading (image_lora.load_pipeline: float16 on CUDA), passed in so that its
    # dtypes can be read back after the run.
    pipe = image_lora.load_pipeline(str(path), device)
    result["pipeline"] = type(pipe).__name__
    result["unet_dtype"] = str(pipe.unet.dtype).removeprefix("torch.")
    events: list[dict] = []
    spec = {"model_path": str(path), "images": [{"path": str(striped(tmp / "a.png")), "caption": "a flag"}],
            "output_dir": str(tmp / "out"), "seed": 0, "device": device, "samples": 1,
            "checkpoint_every": max(1, steps // 2), "eval_every": max(1, steps // 4),
            "hyperparameters": {"training_steps": steps, "learning_rate": 1e-2, "lora_rank": 8, "batch_size": 1}}
    started = time.monotonic()
    done = image_lora.train(spec, lambda event, **f: events.append({"event": event, **f}), pipe=pipe)
    result["train_wall_s"] = round(time.monotonic() - started, 2)
    result["train_seconds"] = done["seconds"]
    trainable = {str(p.dtype).removeprefix("torch.") for p in pipe.unet.parameters() if p.requires_grad}
    result["trainable_dtypes"] = sorted(trainable)
    result["gradient_checkpointing"] = bool(getattr(pipe.unet, "is_gradient_checkpointing", False))
    if device.startswith("cuda"):  # SDXL's recipe on a GPU, as the README says the runner trains it
        assert result["unet_dtype"] == "float16", f"the UNet trained in {result['unet_dtype']}, not float16"
        assert trainable == {"float32"}, f"the adapter's weights are {sorted(trainable)}, not float32"
    losses = [e["loss"] for e in events if e["event"] == "step"]
    evals = [e["fixed_noise_loss"] for e in events if e["event"] == "eval"]
    result["step_losses"] = losses
    result["fixed_noise_losses"] = evals
    result["checkpoints"] = sum(e["event"] == "checkpoint" for e in events)
    assert len(losses) == steps, f"{len(losses)} step events for {steps} steps"
    assert all(math.isfinite(v) for v in losses + evals), f"a loss is not finite: {losses} {evals}"
    adapter = Path(done["adapter_dir"]) / ADAPTER_FILE
    assert adapter.is_file() and adapter.stat().st_size > 0, f"no adapter at {adapter}"
    result["adapter_bytes"] = adapter.stat().st_size
    sample = Path(done["samples"][0]["path"])
    assert sample.is_file(), "no sample image"
    del pipe
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # The image worker's path: its warm pipeline, the adapter loaded into it by name.
    started = time.monotonic()
    pipeline = ImagePipeline(str(path), device=device)
    result["serving_dtype"] = str(pipeline.dtype).removeprefix("torch.")
    folder = tmp / "cache" / adapters.adapter_name("d")
    folder.mkdir(parents=True)
    shutil.copy(adapter, folder / ADAPTER_FILE)
    loras = ImageAdapters(pipeline.pipe, tmp / "cache")

    def image(lora: str = ""):
        with loras.applied(None, "s", lora):
            return pipeline.generate("a flag", steps=4, seed=1)[0]

    base, tuned = image(), image("d")
    again = image()
    result["generate_s"] = round(time.monotonic() - started, 2)
    extrema = tuned.convert("L").getextrema()
    result["tuned_image"] = {"size": list(tuned.size), "grey_min_max": list(extrema)}
    result["tuned_differs_from_base"] = tuned.tobytes() != base.tobytes()
    result["base_unchanged_after"] = again.tobytes() == base.tobytes()
    if image_out is not None:
        image_out.parent.mkdir(parents=True, exist_ok=True)
        tuned.save(image_out)
    assert result["tuned_differs_from_base"], "the adapter did not change the image"
    assert result["base_unchanged_after"], "the base model's image changed after the adapter's job"
    assert extrema != (0, 0), "the image with the adapter is all black (NaN in float16?)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--image", type=Path, help="where to save the image generated with the adapter")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    result: dict = {"ok": False, "device": args.device, "steps": args.steps}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            check(result, Path(tmp), args.steps, args.device, args.image)
        result["ok"] = True
    except Exception as err:  # noqa: BLE001 - the finding is written, whatever it is
        result["error"] = f"{type(err).__name__}: {err}"[:2000]
        result["traceback"] = traceback.format_exc()[-4000:]
    result["seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_losses", "traceback")}), flush=True)
    if not result["ok"]:
        print(result.get("traceback", ""), file=sys.stderr, flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
