"""One LoRA training run, in a child process of the fine-tune worker (a crash or an out-of-memory
kill takes this process, never the worker):

    python -m runner.training.lora SPEC.json

SPEC names the base model, the chat rows to train on and to validate with, the hyperparameters,
an output folder and, to resume, a checkpoint folder. Rows are rendered with the base model's own
chat template, the one vLLM serves with, and the loss counts only the assistant's reply (only the
reply's positions go through the output layer); a batch's rows are packed end to end, without
padding. On a CPU with native bfloat16 the frozen base model is held in it and the forward
passes autocast to it, as on a GPU; the adapter's weights and the optimizer stay float32 (SPEC's
"precision": auto, bf16 or fp32). Progress goes to stdout as JSON lines (`start`, `step`, `eval`,
`checkpoint`, `done`) for the worker to report.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.finetune import epochs_for

IGNORE = -100
MOST_CHECKPOINTS = 10
# Where the epochs are automatic, training stops once the reply loss stayed under CONVERGED_LOSS for
# a whole epoch and at least CONVERGED_STEPS steps in a row: the training answers are then known by
# heart (99.5% on each token), and AdamW's further steps, as large whatever the gradient, only push
# the model toward repeating them. Measured on the suite's invented facts, three runs each (the
# questions differ between runs): at 0.005, runs of 80, 70 and 32 of about 80 steps, held-out
# token F1 0.79, 0.97, 0.85 and new paraphrases answered 2, 3, 4 of 5; never stopping, 0.77, 0.74,
# 1.0 and 2, 1, 3. At 0.02 it stopped at 25-30 steps and F1 fell (0.33, 0.50, 0.63): one run's
# validation loss was still falling at step 64.
CONVERGED_LOSS, CONVERGED_STEPS = 0.005, 3


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def encode(tokenizer, messages: list[dict[str, str]], max_tokens: int) -> dict[str, list[int]]:
    """Token ids of the whole conversation, labels only on the final assistant reply."""
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    if full[:len(prompt)] != prompt:  # a template that rewrites earlier turns: train on it all
        prompt = []
    full = full[:max_tokens]
    labels = [IGNORE] * min(len(prompt), len(full)) + full[len(prompt):]
    return {"input_ids": full, "labels": labels}


def reply_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The causal LM loss over the reply's tokens (the labelled ones), as the model's own loss
    computes it, but with the output layer applied to those positions alone: the prompt's
    positions (most of a question/answer row) never go through the 49,152-word softmax."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not (hasattr(causal, "model") and hasattr(causal, "lm_head")):
        return model(**batch).loss
    placement = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    hidden = causal.model(input_ids=batch["input_ids"], use_cache=False, **placement).last_hidden_state
    labels = batch["labels"][:, 1:]
    kept = labels != IGNORE
    logits = causal.lm_head(hidden[:, :-1][kept])
    return torch.nn.functional.cross_entropy(logits.float(), labels[kept])


class CpuDropout(torch.nn.Module):
    """peft's LoRA dropout (nn.Dropout) with its mask drawn by numpy's PCG64 generator: torch's CPU
    Bernoulli draws a Mersenne Twister number an element on one thread, 1.4 ms for a 450x576 batch
    and a fifth of a bfloat16 step here; this takes 0.6 ms. The same dropout, p to 1/65,536."""

    def __init__(self, p: float, rng: np.random.Generator):
        super().__init__()
        self.p, self.rng = p, rng
        self.threshold = round(p * 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.threshold:
            return x
        dropped = torch.from_numpy(self.rng.integers(0, 65536, x.numel(), dtype=np.uint16) < self.threshold)
        return x.masked_fill(dropped.view(x.shape), 0) * (1 / (1 - self.p))


def cpu_dropout(model, seed: int) -> None:
    """Every LoRA layer's dropout drawn as CpuDropout, from one generator seeded by the run's seed."""
    rng = np.random.default_rng(seed)
    for module in model.modules():
        for name, dropout in list(getattr(module, "lora_dropout", {}).items()):
            if isinstance(dropout, torch.nn.Dropout):
                module.lora_dropout[name] = CpuDropout(dropout.p, rng)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX): there the base model is
    held in it (bench P7: 1.6 times transformers.Trainer's float32 tokens/s on the default model)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocasts_to_bf16(device_type: str, wanted: str = "auto") -> bool:
    """Whether the forward passes autocast to bfloat16 matrix products: on a CPU that has them,
    unless the spec says fp32; a GPU run already holds its weights in bfloat16."""
    return device_type == "cpu" and (wanted == "bf16" or (wanted == "auto" and cpu_has_bf16()))


def collate(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = [r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]
    labels = [r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows]
    mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def pack(rows: list[dict[str, list[int]]], pad_id: int, capacity: int) -> dict[str, torch.Tensor]:
    """The batch's rows laid end to end in sequences of at most `capacity` tokens (a longer row
    alone), each row numbered from position 0. Given positions and no attention mask, transformers
    keeps attention within each row (a block-diagonal causal mask), so the model computes the rows'
    own tokens and almost no padding (padded to its longest row, a batch of bench P7's rows of
    uneven length spends about a fifth of its work on padding). The loss is the padded batch's
    (tests/test_text_lora.py). A row's first label is dropped (never predicted within its own row,
    it would be predicted from the row before it); a shorter sequence's padding is a row of its own."""
    sequences: list[list[dict[str, list[int]]]] = []
    for row in rows:
        if sequences and sum(len(r["input_ids"]) for r in sequences[-1]) + len(row["input_ids"]) <= capacity:
            sequences[-1].append(row)
        else:
            sequences.append([row])
    width = max(sum(len(r["input_ids"]) for r in seq) for seq in sequences)
    ids, labels, positions = [], [], []
    for seq in sequences:
        pad = width - sum(len(r["input_ids"]) for r in seq)
        ids.append([t for r in seq for t in r["input_ids"]] + [pad_id] * pad)
        labels.append([t for r in seq for t in [IGNORE] + r["labels"][1:]] + [IGNORE] * pad)
        positions.append([p for r in seq for p in range(len(r["input_ids"]))] + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}


def batches_of_epoch(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The same order for the same epoch on any machine, so a resumed run sees what the lost one would."""
    order = list(range(n_rows))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]


def validation_loss(model, rows, batch_size: int, pad_id: int, capacity: int, device, autocast) -> float | None:
    if not rows:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in pack(rows[i:i + batch_size], pad_id, capacity).items()}
            with autocast():
                total += reply_loss(model, batch).item() * len(rows[i:i + batch_size])
            count += len(rows[i:i + batch_size])
    model.train()
    return total / count


class Converged:
    """Whether the last `needed` steps' losses were all under CONVERGED_LOSS."""

    def __init__(self, needed: int):
        self.needed, self.below = needed, 0

    def after(self, loss: float) -> bool:
        self.below = self.below + 1 if loss < CONVERGED_LOSS else 0
        return self.below >= self.needed


def save_checkpoint(model, optimizer, scheduler, step: int, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp / "adapter")
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               tmp / "state.pt")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)


def train(spec: dict[str, Any]) -> None:
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    hp = spec["hyperparameters"]
    seed = int(spec.get("seed", 0))
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = AutoTokenizer.from_pretrained(spec["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_tokens = int(spec.get("max_tokens", 512))
    train_rows = [encode(tokenizer, r["messages"], max_tokens) for r in spec["train"]]
    eval_rows = [encode(tokenizer, r["messages"], max_tokens) for r in spec.get("eval", [])]

    bf16 = autocasts_to_bf16(accelerator.device.type, spec.get("precision", "auto"))
    # The frozen base in bfloat16 where the products are: autocast would cast every weight to it
    # again at every step, and the activations between layers back (those copies were half of a
    # CPU step). peft keeps the adapter's own weights float32 (its autocast_adapter_dtype).
    dtype = torch.bfloat16 if accelerator.device.type == "cuda" or bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=dtype)
    model = get_peft_model(model, LoraConfig(
        r=int(hp["lora_rank"]), lora_alpha=int(hp["lora_alpha"]), lora_dropout=0.05,
        target_modules="all-linear", task_type="CAUSAL_LM"))
    if bf16:  # the adapter's input stays bfloat16 too (its products autocast to it anyway)
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    if accelerator.device.type == "cpu":
        cpu_dropout(model, seed)
    batch_size = int(hp["batch_size"])
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    epochs = epochs_for(hp.get("epochs"), steps_per_epoch)
    total_steps = steps_per_epoch * epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(hp["learning_rate"]))
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total_steps // 20), total_steps)

    step = 0
    resume = spec.get("resume_from")
    if resume and (Path(resume) / "state.pt").exists():
        set_peft_model_state_dict(model, load_file(str(Path(resume) / "adapter" / "adapter_model.safetensors")))
        state = torch.load(Path(resume) / "state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext
    computes_in = "bfloat16" if dtype == torch.bfloat16 else "float32"
    emit("start", total_steps=total_steps, epochs=epochs, start_step=step, train_rows=len(train_rows), eval_rows=len(eval_rows),
         computes_in=computes_in,
         train_tokens=sum(len(r["input_ids"]) for r in train_rows),
         trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))

    started = time.monotonic()
    # A checkpoint and a validation loss after each epoch, or after every k-th so that a run has
    # at most MOST_CHECKPOINTS: on a few pairs an epoch is one step, and a checkpoint (the optimizer's
    # state saved, tarred and uploaded) cost more than the step it followed.
    checkpoint_every = int(spec.get("checkpoint_every") or steps_per_epoch * math.ceil(epochs / MOST_CHECKPOINTS))
    output = Path(spec["output_dir"])
    converged = Converged(max(steps_per_epoch, CONVERGED_STEPS)) if not hp.get("epochs") else None
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        batch_indices = batches_of_epoch(len(train_rows), batch_size, seed, epoch)[offset]
        rows = [train_rows[i] for i in batch_indices]
        batch = {k: v.to(accelerator.device) for k, v in pack(rows, pad_id, max_tokens).items()}
        with autocast():
            loss = reply_loss(model, batch)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        emit("step", step=step, epoch=round(step / steps_per_epoch, 3), loss=round(loss.item(), 5),
             learning_rate=scheduler.get_last_lr()[0], time=round(time.time(), 1))
        if converged is not None and converged.after(loss.item()) and step < total_steps:
            emit("converged", step=step, of=total_steps, loss_below=CONVERGED_LOSS, steps_below=converged.needed)
            total_steps = step
        if step % checkpoint_every == 0 or step == total_steps:
            val = validation_loss(model, eval_rows, batch_size, pad_id, max_tokens, accelerator.device, autocast)
            if val is not None:
                emit("eval", step=step, epoch=round(step / steps_per_epoch, 3), val_loss=round(val, 5),
                     time=round(time.time(), 1))
        if step % checkpoint_every == 0 and step < total_steps:
            folder = output / "checkpoint"
            save_checkpoint(accelerator.unwrap_model(model), optimizer, scheduler, step, folder)
            emit("checkpoint", step=step, path=str(folder))
    adapter_dir = output / "adapter"
    accelerator.unwrap_model(model).save_pretrained(adapter_dir)
    emit("done", adapter_dir=str(adapter_dir), seconds=round(time.monotonic() - started, 2), steps=total_steps)


def main() -> None:
    train(json.loads(Path(sys.argv[1]).read_text()))


if __name__ == "__main__":
    main()
