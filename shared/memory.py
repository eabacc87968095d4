"""The memory each kind of work on a model needs, as both sides count it.

Helix declared a memory need per model and mode (Mistral-7B: 6 GB to serve, 12 GB to fine-tune)
and its scheduler placed work only where that much was free. Here the need is declared per model
and kind of work, in bytes of the memory the work runs in (GPU memory on a CUDA runner, host
memory otherwise), in the table below or in the HELIX_MEMORY_NEEDS setting, which both sides read
(the control plane fails at once what no runner could ever hold; the control plane also puts the
need into the job, so a runner holds the job to the same number it was checked against).

Kinds served by a warm model (chat and data preparation on the runner's vLLM, images on its warm
pipeline) take their memory when the runner starts, so a job of those kinds needs nothing more
at run time; a fine-tune starts a training process that loads the model again, and a runner
starts one only when its free memory holds the declared need.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from shared.jobs import WorkKind
from shared.settings import SettingError

KIB, MIB, GIB = 2**10, 2**20, 2**30

# Work that runs on memory the runner took when it started (its vLLM server, its image pipeline).
WARM_KINDS = frozenset({WorkKind.TEXT_INFERENCE, WorkKind.TEXT_DATAPREP, WorkKind.IMAGE_INFERENCE})

# The models this project ships or names in its documentation. A model not listed declares no
# need: its work is never held back for memory (declare one with HELIX_MEMORY_NEEDS).
DECLARED_NEEDS: dict[str, dict[str, int]] = {
    "helix/tiny-chat": {"text-inference": 16 * MIB, "text-dataprep": 16 * MIB, "text-finetune": 512 * MIB},
    "helix/tiny-sd": {"image-inference": 64 * MIB, "image-finetune": 512 * MIB},
    "smollm2-135m-instruct": {"text-inference": 1 * GIB, "text-dataprep": 1 * GIB, "text-finetune": 2 * GIB},
    "mistralai/Mistral-7B-Instruct-v0.1": {"text-inference": 6 * GIB, "text-dataprep": 6 * GIB,
                                           "text-finetune": 12 * GIB},
    "stabilityai/stable-diffusion-xl-base-1.0": {"image-inference": 12 * GIB, "image-finetune": 24 * GIB},
}

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": KIB, "M": MIB, "G": GIB, "T": 2**40}


def parse_size(value: Any) -> int:
    """Bytes from a whole number or a string such as "512MiB", "12GB", "1.5G" (units are powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"not a size: {str(value)[:40]!r} (bytes, or a number with KiB, MiB, GiB or TiB)")
    unit = (match.group(2) or "").upper().replace("I", "").rstrip("B") or ""
    return int(float(match.group(1)) * _UNITS[unit])


def needs_from_env(env: Mapping[str, str], name: str = "HELIX_MEMORY_NEEDS") -> dict[str, dict[str, int]]:
    """The declared table with the setting's entries over it: a JSON object of model ->
    {kind: size}, e.g. {"my-model": {"text-finetune": "20GiB"}}."""
    raw = env.get(name, "").strip()
    table = {model: dict(kinds) for model, kinds in DECLARED_NEEDS.items()}
    if not raw:
        return table
    try:
        given = json.loads(raw)
    except ValueError:
        given = None
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise SettingError(f"{name} must be a JSON object of model -> {{kind of work: size}}, got {raw[:200]!r}")
    kinds = {k.value for k in WorkKind}
    for model, sizes in given.items():
        for kind, size in sizes.items():
            if kind not in kinds:
                raise SettingError(f"{name}: unknown kind of work {kind!r} for {model!r}: use one of "
                                   + ", ".join(sorted(kinds)))
            try:
                table.setdefault(model, {})[kind] = parse_size(size)
            except ValueError as err:
                raise SettingError(f"{name}: {model!r} {kind}: {err}") from None
    return table


def need_of(table: Mapping[str, Mapping[str, int]], model: str, kind: WorkKind | str) -> int:
    """Bytes a job of this kind on this model needs (0: nothing declared)."""
    return int(table.get(model, {}).get(WorkKind(kind).value, 0))


def admission_need(kind: WorkKind | str, declared: int) -> int:
    """What a job must find free on the runner when it starts: nothing for work on a warm model
    (its memory was taken when the runner started), the whole need for a training run."""
    return 0 if WorkKind(kind) in WARM_KINDS else declared


def capacity(info: Mapping[str, Any]) -> int:
    """The memory a runner's work runs in, as it announced it: its GPU's when it has one, else its host's."""
    gpu, host = info.get("gpu_memory_bytes"), info.get("host_memory_bytes")
    if isinstance(gpu, int) and not isinstance(gpu, bool) and gpu > 0:
        return gpu
    return host if isinstance(host, int) and not isinstance(host, bool) and host > 0 else 0


def human(size: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


# The RQ job's `meta` key in which the control plane puts the job's declared need.
JOB_META_KEY = "memory_bytes"


def memory_wait_key(job_id: str) -> str:
    """Where a runner that left a job queued for want of memory says why (read by the session's GET)."""
    return f"helix:memory-wait:{job_id}"


MEMORY_WAIT_TTL_SECONDS = 10
