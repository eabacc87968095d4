"""Image LoRA training and serving on the tiny pipeline, in this process (no services): the
fixed-noise loss falls, a resumed run ends where an uninterrupted one does, EXIF rotation is
honoured, and the warm pipeline generates with a session's adapter without touching the base."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from model_setup.tiny_models import build_tiny_sdxl  # noqa: E402
from runner.text import adapters  # noqa: E402
from runner.images.adapters import ImageAdapters  # noqa: E402
from runner.images.pipeline import ImagePipeline  # noqa: E402
from runner.training import image_lora  # noqa: E402
from shared.image_finetune import ADAPTER_FILE  # noqa: E402


def striped(path: Path, top=(220, 30, 30), bottom=(30, 30, 220), size=(256, 320)) -> Path:
    """Top half one colour, bottom half another, as displayed."""
    w, h = size
    image = Image.new("RGB", (w, h), bottom)
    image.paste(Image.new("RGB", (w, h // 2), top), (0, 0))
    image.save(path)
    return path


def run(spec_extra: dict, tmp: Path, images: list[dict], events: list | None = None, **hp) -> dict:
    events = events if events is not None else []
    spec = {"model_path": str(Path(os.environ.get("HELIX_MODELS_DIR", ".helix/models")) / "tiny-sd"),
            "images": images, "output_dir": str(tmp), "seed": 0, "device": "cpu", "samples": 1,
            "hyperparameters": {"training_steps": 40, "learning_rate": 1e-2, "lora_rank": 8, "batch_size": 1, **hp},
            **spec_extra}
    return image_lora.train(spec, lambda event, **f: events.append({"event": event, **f}))


@pytest.fixture(scope="module")
def models(models_dir):
    os.environ["HELIX_MODELS_DIR"] = str(models_dir)
    return models_dir


@pytest.fixture(scope="module")
def trained(models, tmp_path_factory):
    """One short run on one picture: its events and its adapter."""
    tmp = tmp_path_factory.mktemp("trained")
    images = [{"path": str(striped(tmp / "a.png")), "caption": "a red and blue flag"}]
    events: list = []
    done = run({"checkpoint_every": 1000}, tmp / "out", images, events, training_steps=80)
    return {"events": events, "done": done, "images": images}


def test_the_fixed_noise_loss_falls_on_a_fixed_batch(trained):
    events = trained["events"]
    start = next(e for e in events if e["event"] == "start")
    assert start["total_steps"] == 80 and start["start_step"] == 0 and start["resolution"] == 64
    evals = [e["fixed_noise_loss"] for e in events if e["event"] == "eval"]
    assert len(evals) >= 2
    assert evals[-1] < evals[0] * 0.97, evals
    assert len([e for e in events if e["event"] == "step"]) == 80
    done = trained["done"]
    weights = load_file(str(Path(done["adapter_dir"]) / ADAPTER_FILE))
    assert weights and all(k.startswith("unet.") for k in weights)  # diffusers' LoRA format
    assert [Image.open(s["path"]).size for s in done["samples"]] == [(64, 64)]


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(models, tmp_path):
    images = [{"path": str(striped(tmp_path / "a.png")), "caption": "flag"},
              {"path": str(striped(tmp_path / "b.png", top=(20, 200, 20))), "caption": "green flag"}]
    straight = run({"checkpoint_every": 5}, tmp_path / "straight", images, training_steps=10)
    first = tmp_path / "first"
    events: list = []
    with pytest.raises(StopIteration):  # the run "dies" at its first checkpoint
        def die_at_checkpoint(event, **fields):
            events.append(event)
            if event == "checkpoint":
                raise StopIteration
        image_lora.train({"model_path": str(models / "tiny-sd"), "images": images, "output_dir": str(first),
                          "seed": 0, "device": "cpu", "samples": 0, "checkpoint_every": 5,
                          "hyperparameters": {"training_steps": 10, "learning_rate": 1e-2, "lora_rank": 8,
                                              "batch_size": 1}}, die_at_checkpoint)
    assert events.count("step") == 5
    resumed_events: list = []
    resumed = run({"checkpoint_every": 5, "resume_from": str(first / "checkpoint-5")}, tmp_path / "resumed",
                  images, resumed_events, training_steps=10)
    assert resumed_events[0]["start_step"] == 5
    assert [e["step"] for e in resumed_events if e["event"] == "step"] == list(range(6, 11))
    a = load_file(str(Path(straight["adapter_dir"]) / ADAPTER_FILE))
    b = load_file(str(Path(resumed["adapter_dir"]) / ADAPTER_FILE))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_exif_rotation_is_honoured(tmp_path):
    # Stored sideways with orientation 6 ("rotate 90° clockwise to display"): displayed, red is on top.
    displayed = striped(tmp_path / "displayed.png")
    sideways = Image.open(displayed).rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(tmp_path / "camera.jpg", exif=exif, quality=95)
    prepared = image_lora.prepare_image(tmp_path / "camera.jpg", 64)
    assert prepared.size == (64, 64)
    top, bottom = prepared.getpixel((32, 4)), prepared.getpixel((32, 60))
    assert top[0] > 150 and top[2] < 100, top      # red
    assert bottom[2] > 150 and bottom[0] < 100, bottom  # blue


def test_the_warm_pipeline_uses_an_adapter_only_for_its_session(models, trained, tmp_path):
    pipeline = ImagePipeline(str(models / "tiny-sd"), device="cpu")
    cache = tmp_path / "cache"
    lora_dir = "sessions/s1/outputs/i1"
    folder = cache / adapters.adapter_name(lora_dir)  # as if fetched from the control plane
    folder.mkdir(parents=True)
    shutil.copy(Path(trained["done"]["adapter_dir"]) / ADAPTER_FILE, folder / ADAPTER_FILE)
    loras = ImageAdapters(pipeline.pipe, cache)

    def image(session: str = "", lora: str = "") -> bytes:
        with loras.applied(None, session, lora) as name:
            assert bool(name) == bool(lora)
            return pipeline.generate("a red and blue flag", steps=3, seed=7)[0].tobytes()

    base = image()
    tuned = image("s1", lora_dir)
    assert tuned != base
    assert image() == base                      # nothing left active after the adapter's job
    assert image("s1", lora_dir) == tuned       # loaded once, used again
    assert loras.load_count == 1 and ImagePipeline.load_count >= 1
    assert pipeline.pipe.get_list_adapters()["unet"] == [adapters.adapter_name(lora_dir)]



def test_the_sdxl_path_trains_and_serves(models, tmp_path):
    path = build_tiny_sdxl(models, tmp_path / "tiny-sdxl")
    events: list = []
    done = run({"model_path": str(path), "checkpoint_every": 1000, "eval_every": 20}, tmp_path / "out",
               [{"path": str(striped(tmp_path / "a.png")), "caption": "a flag"}], events, training_steps=20)
    evals = [e["fixed_noise_loss"] for e in events if e["event"] == "eval"]
    assert evals[-1] < evals[0], evals
    pipeline = ImagePipeline(str(path), device="cpu")
    assert type(pipeline.pipe).__name__ == "StableDiffusionXLPipeline"
    folder = tmp_path / "cache" / adapters.adapter_name("d")
    folder.mkdir(parents=True)
    shutil.copy(Path(done["adapter_dir"]) / ADAPTER_FILE, folder / ADAPTER_FILE)
    loras = ImageAdapters(pipeline.pipe, tmp_path / "cache")

    def image(lora: str = "") -> bytes:
        with loras.applied(None, "s", lora):
            return pipeline.generate("a flag", steps=2, seed=1)[0].tobytes()

    base = image()
    assert image("d") != base and image() == base
