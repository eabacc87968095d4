"""The training job of a text fine-tune: held-out split, LoRA training in a child process,
checkpoints and the adapter uploaded to the control plane, evaluation before and after.

A runner killed mid-training loses nothing but the steps since the last checkpoint: the
reconciler queues the job again, and the payload names the last uploaded checkpoint to resume from.
"""
from __future__ import annotations

import io
import json
import logging
import math
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from runner.config import TRAINING
from runner.control_plane.client import Gone
from runner.dataprep.quality import hold_out
from runner.evaluation.compare import evaluate
from runner.job_watch import JobWatch
from runner.knowledge import retrieval
from runner.knowledge.embedder import NoEmbedder
from runner.jobs import CANCEL_POLL_SECONDS, context, unless_gone
from runner.text import adapters
from shared.finetune import ADAPTER_FILES, hyperparameters
from shared.jobs import TextFinetuneJob
from shared.processes import die_with_parent
from shared.types import DataPrepStage, InteractionState
from shared.wire import InteractionUpdate, MetricsReport

TRAINER_NICENESS = 10  # of 19: below serving, never starved when the CPU is otherwise idle

log = logging.getLogger(__name__)
REPORT_INTERVAL = 1.0  # seconds between loss reports: a history, not a stream


def _rows(pairs: list[dict], system_prompt: str) -> list[dict]:
    """Chat rows in the format the model is served in: a pair's own system message if it has one
    (an OpenAI job's examples; "" for none), else the session's."""
    rows = []
    for p in pairs:
        system = p["system_prompt"] if p.get("system_prompt") is not None else system_prompt
        rows.append({"messages": [*([{"role": "system", "content": system}] if system else []),
                                  {"role": "user", "content": p["question"]},
                                  {"role": "assistant", "content": p["answer"]}]})
    return rows


def _split(pairs: list[dict], share: float, seed: str) -> tuple[list[dict], list[dict]]:
    """Pairs given as held out (an OpenAI job's validation file) are the evaluation set; else a
    share of each fact's paraphrases is held out."""
    if any(p.get("held_out") for p in pairs):
        return [p for p in pairs if not p.get("held_out")], [p for p in pairs if p.get("held_out")]
    return hold_out([{**p, "fact_key": p.get("fact") or p["question"]} for p in pairs], share, seed=seed)


def _tar(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname="checkpoint")
    return buffer.getvalue()


def _untar(data: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "checkpoint"


class _Reporter:
    """Turns the child's events into throttled progress, a loss history and uploaded checkpoints."""

    def __init__(self, ctx, job, unit: str = "pairs"):
        self.ctx, self.job, self.unit = ctx, job, unit
        self.points: list[dict] = []
        self.last_sent = 0.0
        self.total_steps = 1
        self.last_loss: float | None = None

    def flush(self, force: bool = False) -> None:
        if not self.points or (not force and time.monotonic() - self.last_sent < REPORT_INTERVAL):
            return
        self.ctx.client.report(self.job.session_id, self.job.interaction_id, "metrics", MetricsReport(points=self.points))
        step = self.points[-1].get("step", 0)
        self.ctx.client.update(self.job.session_id, self.job.interaction_id, InteractionUpdate(
            progress=min(89, int(step * 90 / self.total_steps)),
            status=f"training: step {step}/{self.total_steps}, loss {self.last_loss}"))
        self.points, self.last_sent = [], time.monotonic()

    def on(self, event: dict[str, Any]) -> None:
        kind = event.pop("event")
        if kind == "start":
            self.total_steps = max(1, event["total_steps"])
            # The history restarts here: an earlier attempt's points past this step are replaced.
            self.ctx.client.report(self.job.session_id, self.job.interaction_id, "metrics",
                                   MetricsReport(points=[], from_step=event["start_step"]))
            self.ctx.client.update(self.job.session_id, self.job.interaction_id, InteractionUpdate(
                status=f"training: {event['train_rows']} {self.unit}, {self.total_steps} steps"
                + (f", resuming at step {event['start_step']}" if event["start_step"] else ""),
                metadata={"training_run": event}))
        elif kind in ("step", "eval"):
            self.last_loss = event.get("loss", self.last_loss)
            self.points.append(event)
            self.flush(force=kind == "eval")
        elif kind == "converged":
            self.flush(force=True)
            self.total_steps = event["step"]
            self.ctx.client.update(self.job.session_id, self.job.interaction_id, InteractionUpdate(
                status=f"training: converged at step {event['step']} of {event['of']} (loss under"
                       f" {event['loss_below']} for {event['steps_below']} steps)",
                metadata={"training_converged": event}))
        elif kind == "checkpoint":
            self.flush(force=True)
            path = self.ctx.client.upload_result(self.job.session_id, self.job.interaction_id, "checkpoint.tar",
                                                 _tar(Path(event["path"])))
            self.ctx.client.update(self.job.session_id, self.job.interaction_id, InteractionUpdate(
                metadata={"checkpoint": {"path": path, "step": event["step"]}}))


def _run_child(ctx, job, spec: dict, workdir: Path, reporter: _Reporter,
               module: str = "runner.training.lora") -> dict:
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    log_path = workdir / "train.log"
    from rq import get_current_job

    with open(log_path, "ab") as err, JobWatch(get_current_job(), math.inf, interval=CANCEL_POLL_SECONDS) as watch:
        # SIGKILL when this worker dies: an orphaned trainer would hold the memory and race the retry.
        # Training is background work: on a busy CPU it gives way to chats (vLLM) and, where they
        # share the machine as under `make run`, the control plane and the databases.
        proc = subprocess.Popen([sys.executable, "-m", module, str(spec_path)],
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                preexec_fn=die_with_parent(signal.SIGKILL, niceness=TRAINER_NICENESS))
        # Cancelled (its job gone from Redis): the training process is killed, its memory freed at once.
        watch.on_stop(proc.kill)
        done: dict = {}
        gone = False
        try:
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue
                event = json.loads(line)
                if event["event"] == "done":
                    done = event
                else:
                    reporter.on(event)
        except Gone:
            gone = True  # a report found it cancelled before the watch did
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if gone or watch.stop.is_set():
        log.info("training of %s stopped: its job was cancelled or taken over", job.interaction_id)
        raise Gone(job.interaction_id)
    reporter.flush(force=True)
    if proc.returncode != 0 or not done:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise TrainingFailed(f"training exited with {proc.returncode}: " + " | ".join(tail)[-800:])
    return done


class TrainingFailed(Exception):
    pass


def _excerpts(ctx, job: TextFinetuneJob, held: list[dict]) -> list[list[dict]] | None:
    """Each held-out question's excerpts from the session's index, for the knowledge report; None
    without an index (or without the embedding model here: the report then has two ways)."""
    if not job.knowledge_report:
        return None
    try:
        return retrieval.search(ctx, job.session_id, job.interaction_id, [p["question"] for p in held])
    except NoEmbedder:
        log.warning("no embedding model on this runner: the evaluation of %s compares two ways, not four",
                    job.interaction_id)
        return None


@unless_gone
def train_text(payload: dict[str, Any]) -> dict[str, Any]:
    ctx = context()
    job = TextFinetuneJob.from_dict(payload)
    sid, iid = job.session_id, job.interaction_id
    started = time.monotonic()
    ctx.client.update(sid, iid, InteractionUpdate(data_prep_stage=DataPrepStage.FINETUNE.value, progress=0,
                                                  status="preparing the training data"))
    pairs = ctx.client.report(sid, iid, "pairs", method="GET")
    train, held = _split(pairs, job.eval_share, seed=iid)
    if not train:
        ctx.client.finish(sid, iid, InteractionUpdate(state=InteractionState.ERROR.value, status="failed",
                                                      error="there are no question/answer pairs to train on"))
        return {"error": "no pairs"}

    workdir = Path(ctx.config.work_dir) / TRAINING / iid
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    resume = _untar(ctx.client.download(sid, job.checkpoint), workdir / "resume") if job.checkpoint else None
    hp = hyperparameters(job.hyperparameters)
    spec = {"model_path": ctx.config.text_model_path or job.model, "output_dir": str(workdir / "out"),
            "train": _rows(train, job.system_prompt), "eval": _rows(held, job.system_prompt),
            "hyperparameters": hp, "seed": job.seed, "resume_from": str(resume) if resume else ""}
    reporter = _Reporter(ctx, job)
    try:
        done = _run_child(ctx, job, spec, workdir, reporter)
    except BaseException as err:
        # Failed or cancelled (its session deleted, say): the copies of the user's pairs and the
        # checkpoints go with it (a retry resumes from the checkpoints in the filestore).
        shutil.rmtree(workdir, ignore_errors=True)
        if not isinstance(err, TrainingFailed):
            raise
        ctx.client.finish(sid, iid, InteractionUpdate(state=InteractionState.ERROR.value, status="failed",
                                                      error=str(err)))
        return {"error": str(err)}

    ctx.client.update(sid, iid, InteractionUpdate(progress=90, status="uploading the adapter"))
    adapter_dir = Path(done["adapter_dir"])
    paths = [ctx.client.upload_result(sid, iid, name, (adapter_dir / name).read_bytes())
             for name in ADAPTER_FILES]
    lora_dir = paths[0].rsplit("/", 1)[0]

    ctx.client.update(sid, iid, InteractionUpdate(progress=95, status=f"evaluating on {len(held)} held-out questions"))
    # Kept in the runner's adapter cache (vLLM reads the files again whenever it reloads them).
    name = adapters.adapter_name(lora_dir)
    cached = shutil.copytree(adapter_dir, adapters.cache_dir(ctx.config.work_dir) / name, dirs_exist_ok=True)
    shutil.rmtree(workdir, ignore_errors=True)
    tuned = adapters.load(ctx.vllm_url, name, Path(cached), ctx.http)
    evaluation = evaluate(ctx.vllm_url, job.model, tuned, job.system_prompt, held,
                          excerpts=_excerpts(ctx, job, held)) if held else {
        "held_out": 0, "note": "too few questions per fact to hold any out"}

    summary = (f"Fine-tuned on {len(train)} question/answer pairs in {done['seconds']:.0f}s"
               + (f"; held-out token F1 {evaluation['before']['token_f1']:.2f} before,"
                  f" {evaluation['after']['token_f1']:.2f} after" if held else "")
               + ("; by way: " + ", ".join(f"{w} {m['token_f1']:.2f}" for w, m in evaluation["ways"].items())
                  if "ways" in evaluation else "") + ".")
    ctx.client.finish(sid, iid, InteractionUpdate(
        state=InteractionState.COMPLETE.value, progress=100, status="complete", message=summary,
        data_prep_stage=DataPrepStage.COMPLETE.value, lora_dir=lora_dir,
        metadata={"evaluation": evaluation,
                  "training": {"train_pairs": len(train), "eval_pairs": len(held), "hyperparameters": hp,
                               "steps": done["steps"], "train_seconds": done["seconds"],
                               "total_seconds": round(time.monotonic() - started, 1)}}))
    return {"lora_dir": lora_dir, "evaluation": evaluation.get("after")}
