"""The text trainer's step (runner/training/lora.py) on the tiny model: the loss over the reply's
positions alone is the model's own causal LM loss, in float32 and close to it under bfloat16
autocast, and the precision follows the spec; its LoRA dropout is peft's, drawn faster."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from runner.training.lora import CpuDropout, autocasts_to_bf16, collate, cpu_dropout, encode, pack, reply_loss

ROWS = [[{"role": "system", "content": "You are an expert on zorblat.txt."},
         {"role": "user", "content": question},
         {"role": "assistant", "content": answer}]
        for question, answer in [("Who founded the Zorblat Library?", "Mira Tessel founded it in 1847."),
                                 ("When is the reading room open?", "Only on Thursdays."),
                                 ("What does the library hold?", "Twelve thousand maps of the northern seas.")]]


@pytest.fixture(scope="module")
def model_and_batch(models_dir):
    path = str(models_dir / "tiny-chat")
    tokenizer = AutoTokenizer.from_pretrained(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    rows = [encode(tokenizer, r, 512) for r in ROWS]
    return model.eval(), collate(rows, pad), rows, pad


def test_the_reply_loss_is_the_models_own_loss(model_and_batch):
    model, batch, _, _ = model_and_batch
    assert (batch["labels"] != -100).sum() < batch["labels"].numel() / 2  # most positions are the prompt's
    with torch.no_grad():
        own, ours = model(**batch).loss.item(), reply_loss(model, batch).item()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = reply_loss(model, batch).item()
    assert ours == pytest.approx(own, rel=1e-5)
    assert cast == pytest.approx(own, rel=0.02)


def test_gradients_reach_the_adapter_through_the_reply_loss(model_and_batch):
    model, batch, _, _ = model_and_batch
    model.zero_grad()
    reply_loss(model, batch).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()


@pytest.mark.parametrize("capacity", [512, 40])
def test_packed_rows_train_as_the_padded_batch_does(model_and_batch, capacity):
    # The rows end to end (in one sequence, or at 40 tokens in three, padded): no attention across
    # rows and no label across a seam, so the loss and the adapter's gradients are the padded batch's.
    model, padded, rows, pad = model_and_batch
    packed = pack(rows, pad, capacity)
    lengths = [len(r["input_ids"]) for r in rows]
    assert packed["input_ids"].shape == ((1, sum(lengths)) if capacity == 512 else (3, max(lengths)))
    assert (packed["labels"] != -100).sum() == (padded["labels"] != -100).sum()
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        loss = reply_loss(model, batch)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for n, p in model.named_parameters() if "lora_B" in n]))
    model.zero_grad()
    (loss_padded, grads_padded), (loss_packed, grads_packed) = grads
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads_padded, grads_packed))
    if capacity == 512:  # Attention across rows would change them: the rows numbered as one sequence do.
        joined = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
        with torch.no_grad():
            assert reply_loss(model, joined).item() != pytest.approx(loss_padded, rel=1e-4)


def test_bfloat16_autocast_only_on_a_cpu_and_as_the_spec_says(monkeypatch):
    monkeypatch.setattr("runner.training.lora.cpu_has_bf16", lambda: True)
    assert autocasts_to_bf16("cpu") and autocasts_to_bf16("cpu", "bf16")
    assert not autocasts_to_bf16("cpu", "fp32") and not autocasts_to_bf16("cuda")
    monkeypatch.setattr("runner.training.lora.cpu_has_bf16", lambda: False)
    assert not autocasts_to_bf16("cpu") and autocasts_to_bf16("cpu", "bf16")


def test_the_cpu_dropout_is_peft_s_dropout_drawn_faster(models_dir):
    """Every LoRA layer's nn.Dropout is swapped for CpuDropout: the same share dropped, the kept
    values scaled by 1/(1-p) and their gradients alike, nothing dropped in eval, and the masks
    the same for the same seed."""
    path = str(models_dir / "tiny-chat")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    cpu_dropout(model, seed=3)
    layers = [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_dropout")]
    assert layers and all(isinstance(d, CpuDropout) and d.p == 0.05 for d in layers)

    x = torch.ones(400, 500, requires_grad=True)
    dropped = layers[0].train()(x)
    assert (dropped == 0).float().mean().item() == pytest.approx(0.05, abs=0.003)
    assert torch.allclose(dropped[dropped != 0], torch.tensor(1 / 0.95))
    dropped.sum().backward()
    assert torch.equal(x.grad, dropped.detach())  # d(x * mask / (1-p))/dx is the scaled mask
    assert layers[0].eval()(x) is x

    masks = [(CpuDropout(0.05, np.random.default_rng(seed)).train()(torch.ones(64, 64)) == 0) for seed in (1, 1, 2)]
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def _train(models_dir, tmp_path, capsys, **hyperparameters) -> list[dict]:
    import json

    from runner.training.lora import train
    from shared.finetune import hyperparameters as with_defaults

    train({"model_path": str(models_dir / "tiny-chat"), "output_dir": str(tmp_path), "seed": 3,
           "hyperparameters": with_defaults(hyperparameters),
           "train": [{"messages": r} for r in ROWS], "eval": [{"messages": ROWS[0]}]})
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_automatic_epochs_stop_once_the_examples_are_learned(models_dir, tmp_path, capsys, monkeypatch):
    """With the epochs left automatic, training ends once the reply loss stayed under
    CONVERGED_LOSS for CONVERGED_STEPS steps (an epoch is one step here), and the adapter is saved
    then; with epochs given, every planned step runs. The tiny model's random weights learn
    slowly: its bound is its loss a few steps in, not the real model's 0.02."""
    from runner.training.lora import CONVERGED_STEPS

    CONVERGED_LOSS = 6.0
    monkeypatch.setattr("runner.training.lora.CONVERGED_LOSS", CONVERGED_LOSS)
    events = _train(models_dir, tmp_path / "auto", capsys, learning_rate=1e-2)
    planned = next(e for e in events if e["event"] == "start")["total_steps"]
    steps = [e for e in events if e["event"] == "step"]
    converged = next(e for e in events if e["event"] == "converged")
    assert converged["step"] == len(steps) < planned == converged["of"]
    assert all(e["loss"] < CONVERGED_LOSS for e in steps[-CONVERGED_STEPS:])
    assert not all(e["loss"] < CONVERGED_LOSS for e in steps[-CONVERGED_STEPS - 1:])  # not a step later
    assert events[-1]["event"] == "done" and events[-1]["steps"] == len(steps)
    assert (tmp_path / "auto" / "adapter" / "adapter_model.safetensors").exists()

    events = _train(models_dir, tmp_path / "given", capsys, learning_rate=1e-2, epochs=len(steps) + 5)
    assert [e["event"] for e in events].count("step") == len(steps) + 5
    assert "converged" not in [e["event"] for e in events]
