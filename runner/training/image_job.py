"""The training job of an image fine-tune: the session's images fetched, a UNet LoRA trained in a
child process (runner/training/image_lora.py), checkpoints, the adapter and sample images
uploaded to the control plane.

Like the text job, a runner killed mid-training loses only the steps since the last checkpoint:
the reconciler queues the job again, and the payload names the last uploaded checkpoint.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

from runner.config import TRAINING
from runner.jobs import context, unless_gone
from runner.training.job import TrainingFailed, _Reporter, _run_child, _untar
from shared.image_finetune import ADAPTER_FILE, hyperparameters
from shared.jobs import ImageFinetuneJob
from shared.types import DataPrepStage, InteractionState
from shared.wire import InteractionUpdate

log = logging.getLogger(__name__)


class _ImageReporter(_Reporter):
    """Takes each checkpoint folder away from the trainer (a rename, atomic) before uploading it,
    so the trainer, which goes on training meanwhile, never writes into what is being sent."""

    def on(self, event: dict[str, Any]) -> None:
        if event.get("event") == "checkpoint":
            taken = Path(event["path"]).with_name("uploading")
            shutil.rmtree(taken, ignore_errors=True)
            os.rename(event["path"], taken)
            event = {**event, "path": str(taken)}
        super().on(event)


@unless_gone
def train_image(payload: dict[str, Any]) -> dict[str, Any]:
    ctx = context()
    job = ImageFinetuneJob.from_dict(payload)
    workdir = Path(ctx.config.work_dir) / TRAINING / job.interaction_id
    try:
        return _train(ctx, job, workdir)
    finally:  # the images, checkpoints and adapter are in the filestore now (or the run is over)
        shutil.rmtree(workdir, ignore_errors=True)


def _train(ctx, job: ImageFinetuneJob, workdir: Path) -> dict[str, Any]:
    sid, iid = job.session_id, job.interaction_id
    started = time.monotonic()
    ctx.client.update(sid, iid, InteractionUpdate(data_prep_stage=DataPrepStage.FINETUNE.value, progress=0,
                                                  status=f"fetching {len(job.images)} images"))
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "images").mkdir(parents=True)
    images = []
    for n, item in enumerate(job.images):
        local = workdir / "images" / f"{n}-{PurePosixPath(item['path']).name}"
        local.write_bytes(ctx.client.download(sid, item["path"]))
        images.append({"path": str(local), "caption": item["caption"]})
    resume = _untar(ctx.client.download(sid, job.checkpoint), workdir / "resume") if job.checkpoint else None
    hp = hyperparameters(job.hyperparameters)
    spec = {"model_path": ctx.config.image_model_path or job.model, "images": images,
            "output_dir": str(workdir / "out"), "hyperparameters": hp, "seed": 0,
            "resume_from": str(resume) if resume else ""}
    try:
        done = _run_child(ctx, job, spec, workdir, _ImageReporter(ctx, job, unit="images"),
                          module="runner.training.image_lora")
    except TrainingFailed as err:
        ctx.client.finish(sid, iid, InteractionUpdate(state=InteractionState.ERROR.value, status="failed",
                                                      error=str(err)))
        return {"error": str(err)}

    ctx.client.update(sid, iid, InteractionUpdate(progress=92, status="uploading the adapter and samples"))
    adapter = ctx.client.upload_result(sid, iid, ADAPTER_FILE, (Path(done["adapter_dir"]) / ADAPTER_FILE).read_bytes())
    lora_dir = adapter.rsplit("/", 1)[0]
    samples = [{"file": ctx.client.upload_result(sid, iid, Path(s["path"]).name, Path(s["path"]).read_bytes()),
                "caption": s["caption"], "seed": s["seed"]} for s in done["samples"]]
    ctx.client.finish(sid, iid, InteractionUpdate(
        state=InteractionState.COMPLETE.value, progress=100, status="complete",
        message=f"Fine-tuned on {len(images)} images in {done['seconds']:.0f}s; samples from the captions attached.",
        files=[s["file"] for s in samples], data_prep_stage=DataPrepStage.COMPLETE.value, lora_dir=lora_dir,
        metadata={"samples": samples,
                  "training": {"images": len(images), "hyperparameters": hp, "steps": done["steps"],
                               "train_seconds": done["seconds"],
                               "total_seconds": round(time.monotonic() - started, 1)}}))
    return {"lora_dir": lora_dir, "samples": len(samples)}
