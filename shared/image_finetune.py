"""What both sides agree on about image fine-tunes: the images a request may send, the captions'
default, the hyperparameters and their bounds, and the adapter's file. The control plane
validates a request against these; the runner applies them."""
from __future__ import annotations

# Image formats a fine-tune reads (by content, not by name): Pillow decodes each in the control
# plane before anything is stored, and again in the trainer.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")

# A missing caption becomes the session's trigger word. Helix prefixed every caption with its
# trigger word, so every later prompt had to name it to get the fine-tune; here the adapter
# belongs to the session and every prompt in it is generated with it, so captions given are
# used as written (prompts read like the captions), and only images without one learn the word.
DEFAULT_TRIGGER_WORD = "hlx"
MAX_CAPTION_CHARS = 1000

# name: (default, low, high). Helix trained rank 32 for 1,000 steps at 768 px on SDXL; the
# diffusers LoRA recipes use lr 1e-4. The tiny pipeline trains 4-6 steps a second on 2 CPU cores.
HYPERPARAMETERS: dict[str, tuple[float, float, float]] = {
    "training_steps": (1000, 1, 10_000),
    "learning_rate": (1e-4, 1e-6, 1e-2),
    "lora_rank": (16, 1, 128),
    "batch_size": (1, 1, 16),
}
INTEGER_HYPERPARAMETERS = {"training_steps", "lora_rank", "batch_size"}

# The trained adapter, in diffusers' LoRA format (`save_lora_weights` / `load_lora_weights`),
# the only file in the folder its session's `lora_dir` names.
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
ADAPTER_FILES = (ADAPTER_FILE,)

# Sample images made from the captions at the end of a run, so the user sees what was learned.
SAMPLE_IMAGES = 4
SAMPLE_SEED = 0


def hyperparameters(given: dict) -> dict:
    """The defaults, overridden by what was given (already validated)."""
    return {name: given.get(name, default) for name, (default, _, _) in HYPERPARAMETERS.items()}


def caption_for(given: str | None, trigger_word: str) -> str:
    """The caption an image trains with: as given, else the trigger word."""
    given = " ".join((given or "").split())
    return given or trigger_word
