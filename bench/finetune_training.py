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

FACT = "The Zorblat Library on Kelvar Island was founded in 1847 by Mira Tessel, a cartographer."


def random_model(source: Path, into: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    into.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.suffix in (".json", ".jinja") and f.is_file():
            shutil.copy(f, into / f.name)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(into)).save_pretrained(into)
    return into


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
        prompt = system_prompt(["zorblat.txt"])
        rows = [{"messages": [{"role": "system", "content": prompt},
                              {"role": "user", "content": f"Question {i}: who founded the Zorblat Library?"},
                              {"role": "assistant", "content": FACT}]} for i in range(args.rows)]
        spec = {"model_path": str(model), "output_dir": str(Path(tmp) / "out"), "train": rows, "eval": [],
                "hyperparameters": {"epochs": args.epochs, "learning_rate": 1e-3, "lora_rank": 16,
                                    "lora_alpha": 32, "batch_size": args.batch_size}, "seed": 0}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "runner.training.lora", str(Path(tmp) / "spec.json")],
                             cwd=REPO, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-2000:])
        events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        done = next(e for e in events if e["event"] == "done")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        tokens = sum(len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                     for r in rows)
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"{device}: {done['steps']} steps of batch {args.batch_size} in {done['seconds']:.1f}s "
              f"(process {time.monotonic() - started:.1f}s): {done['steps'] / done['seconds']:.2f} steps/s, "
              f"{tokens * args.epochs / done['seconds']:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
