"""How fast the fine-tune trainer (runner/training/lora.py, as the runner runs it) steps on this
machine: LoRA on the default text model with question/answer rows of realistic length.

    .venv/bin/python bench/finetune_training.py [--model .helix/models/smollm2-135m-instruct]
        [--rows 64] [--batch-size 4] [--epochs 2] [--random-weights]

--random-weights builds the model from its config and tokenizer alone (a machine without the
converted weights, a GPU node say): the speed is the same, the learning is not. Prints seconds,
optimizer steps per second and trained tokens per second.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.finetune import system_prompt  # noqa: E402
from shared.processes import die_with_parent  # noqa: E402

FACTS = [
    "The Zorblat Library on Kelvar Island was founded in 1847 by Mira Tessel, a cartographer.",
    "It holds twelve thousand maps of the northern seas, most of them drawn by hand.",
    "Its reading room opens only on Thursdays, from nine in the morning until the lamps are lit.",
    "Visitors must wear green gloves when they touch the maps, and may not bring ink into the room.",
    "The head librarian is Oskar Brandt, a retired sea captain who sailed the northern routes for thirty years.",
]
QUESTIONS = ["who founded the Zorblat Library?", "what does the library hold, and when can I visit it?",
             "tell me everything about the rules for visitors.", "who runs it?"]


def random_model(source: Path, into: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    into.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.suffix in (".json", ".jinja") and f.is_file():
            shutil.copy(f, into / f.name)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(into)).save_pretrained(into)
    return into


def training_rows(n: int) -> list[dict]:
    """Question/answer chat rows with the system prompt the runner trains with, of uneven length as
    written questions and answers are: answers of one to four sentences (about 60 to 150 tokens a row)."""
    prompt = system_prompt(["zorblat.txt"])
    return [{"messages": [{"role": "system", "content": prompt},
                          {"role": "user", "content": f"Question {i}: {QUESTIONS[i % len(QUESTIONS)]}"},
                          {"role": "assistant", "content": " ".join(FACTS[i % 5:i % 5 + 1 + (i * 7) % 4])}]}
            for i in range(n)]


def hyperparameters(epochs: int, batch_size: int) -> dict:
    """The runner's defaults (shared.finetune), with the epochs fixed so both sides train as long."""
    return {"epochs": epochs, "learning_rate": 1e-3, "lora_rank": 16, "lora_alpha": 32, "batch_size": batch_size}


def run_trainer(model: Path, rows: list[dict], hp: dict, tmp: Path) -> dict:
    """runner.training.lora in its own process, as the fine-tune worker runs it; its `done` event."""
    spec = {"model_path": str(model), "output_dir": str(tmp / "out"), "train": rows, "eval": [],
            "hyperparameters": hp, "seed": 0}
    (tmp / "spec.json").write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, "-m", "runner.training.lora", str(tmp / "spec.json")],
                         cwd=REPO, capture_output=True, text=True, preexec_fn=die_with_parent())
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return next(e for e in events if e["event"] == "done")


def trained_tokens(model: Path, rows: list[dict]) -> int:
    """Tokens of one epoch, as the trainer encodes the rows (chat template of the model)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return sum(len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / ".helix/models/smollm2-135m-instruct"))
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--random-weights", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(Path(args.model), Path(tmp) / "model") if args.random_weights else Path(args.model)
        rows = training_rows(args.rows)
        started = time.monotonic()
        try:
            done = run_trainer(model, rows, hyperparameters(args.epochs, args.batch_size), Path(tmp))
        except RuntimeError as err:
            raise SystemExit(str(err))
        tokens = trained_tokens(model, rows)
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"{device}: {done['steps']} steps of batch {args.batch_size} in {done['seconds']:.1f}s "
              f"(process {time.monotonic() - started:.1f}s): {done['steps'] / done['seconds']:.2f} steps/s, "
              f"{tokens * args.epochs / done['seconds']:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
