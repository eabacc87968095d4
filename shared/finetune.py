"""What both sides agree on about text fine-tunes: question styles, hyperparameters and their
bounds. The control plane validates a request against these; the runner applies them."""
from __future__ import annotations

import hashlib

# Documents a fine-tune reads (a .url file holds one http(s) URL per line).
DOCUMENT_EXTENSIONS = (".txt", ".md", ".html", ".htm", ".pdf", ".docx", ".url")
# Most bytes a document's archive (a .docx) may inflate to, all its members together: the
# control plane's door (HELIX_MAX_DOCUMENT_INFLATED_BYTES) and the runner's reader
# (HELIX_DATAPREP_MAX_DOCUMENT_BYTES) both hold to it by default. 64 MiB is far more than the text
# of any real document; the pictures in a .docx count too.
DOCUMENT_MAX_INFLATED_BYTES = 64 * 1024 * 1024

# Each fact of a document is asked in several ways (Helix ran nine styles per chunk); the runner
# holds each style's instruction to the model. The first three are the default.
QUESTION_STYLES = ("quiz", "paraphrase", "wh", "curious", "keyword")
DEFAULT_QUESTION_STYLES = QUESTION_STYLES[:3]

# name: (default, low, high). Measured on SmolLM2-135M on a CPU with five invented facts and
# two or three questions each: 12 steps (8 epochs of batch 8) taught it nothing; 90 steps (batch 4,
# lr 1e-3) taught it to answer three of five unseen paraphrases. So `epochs` defaults to "auto":
# at least MIN_EPOCHS, and enough for MIN_STEPS optimizer steps on a small set of pairs.
HYPERPARAMETERS: dict[str, tuple[float | None, float, float]] = {
    "epochs": (None, 1, 100),
    "learning_rate": (1e-3, 1e-6, 1e-2),
    "lora_rank": (16, 1, 64),         # the runner's vLLM serves adapters up to rank 64
    "lora_alpha": (32, 1, 256),
    "batch_size": (4, 1, 64),
}
MIN_EPOCHS, MIN_STEPS, MAX_AUTO_EPOCHS = 8, 80, 50


def epochs_for(given: int | None, steps_per_epoch: int) -> int:
    """The user's epochs, or the automatic choice above."""
    if given:
        return int(given)
    return max(MIN_EPOCHS, min(MAX_AUTO_EPOCHS, -(-MIN_STEPS // max(1, steps_per_epoch))))
INTEGER_HYPERPARAMETERS = {"epochs", "lora_rank", "lora_alpha", "batch_size"}

DEFAULT_EVAL_SHARE = 0.2

# A trained adapter's files, in diffusers/peft format, in the folder its session's `lora_dir` names.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # of each fact's questions, held out to score before and after


def hyperparameters(given: dict) -> dict:
    """The defaults, overridden by what was given (already validated)."""
    return {name: given.get(name, default) for name, (default, _, _) in HYPERPARAMETERS.items()}


def system_prompt(documents: list[str]) -> str:
    """Saved with the session and used for training rows and for every later chat alike, so the
    model is served in the format it was trained in."""
    names = ", ".join(documents[:20]) + (f" and {len(documents) - 20} more" if len(documents) > 20 else "")
    return (f"You are an assistant fine-tuned on these documents: {names}. "
            "Answer questions about them with the facts they state.")


def adapter_name(lora_dir: str) -> str:
    """An adapter's name on a runner (its folder in the runner's caches, its name in vLLM and the
    image pipeline), by its folder in the filestore alone (that holds the id of the session that
    trained it): every session served with one adapter shares one copy. The control plane derives
    it too, to tell runners which adapters to delete from their disks."""
    return "lora-" + hashlib.sha256(lora_dir.encode()).hexdigest()[:20]
