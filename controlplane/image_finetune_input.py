"""What an image fine-tune request may send, checked before anything is stored: every file is
decoded with Pillow (no torch here), and a non-image, a truncated or damaged image, one too small
to train on, or one past the configured count is a 400 that names the file."""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Mapping

from PIL import Image, ImageOps, UnidentifiedImageError

from controlplane.errors import BadRequest
from controlplane.filestore import user_path
from controlplane.validation import hyperparameters, text_field
from shared.image_finetune import (DEFAULT_TRIGGER_WORD, HYPERPARAMETERS, IMAGE_FORMATS, INTEGER_HYPERPARAMETERS,
                                   MAX_CAPTION_CHARS, caption_for)

# Larger pictures are refused before they are decoded: 40 megapixels is past any camera's
# ordinary output, and a small file that claims more is a decompression bomb.
MAX_PIXELS = 40_000_000
_TRIGGER = re.compile(r"[A-Za-z0-9_-]{1,40}")


@dataclass
class TrainingImage:
    name: str          # the base name it is stored under
    caption: str       # as given, or the trigger word
    data: bytes        # the upload as sent (its EXIF rotation is applied when it is trained on)
    width: int         # as displayed, after EXIF rotation
    height: int


def parse_options(form: Mapping[str, str]) -> dict[str, Any]:
    """The optional hyperparameters and trigger word, validated now so no bad value reaches a runner."""
    if (form.get("steps") or "").strip():
        raise BadRequest("'steps' is the number of denoising steps of a generated image: a fine-tune's"
                         " length is 'training_steps'")
    hyper = hyperparameters(form, HYPERPARAMETERS, INTEGER_HYPERPARAMETERS)
    trigger = (form.get("trigger_word") or "").strip() or DEFAULT_TRIGGER_WORD
    if not _TRIGGER.fullmatch(trigger):
        raise BadRequest("'trigger_word' must be one word of at most 40 letters, digits, '_' or '-'")
    return {"hyperparameters": hyper, "trigger_word": trigger}


def image_name(filename: str, max_name_bytes: int) -> str:
    name = PurePosixPath(filename.replace("\\", "/")).name.strip()
    if not name or name in (".", ".."):
        raise BadRequest(f"file {filename[:80]!r} has no usable name")
    user_path(name, max_name_bytes=max_name_bytes, allow_root=False)
    return name


def _decode(name: str, data: bytes, min_px: int) -> tuple[int, int]:
    """The image's displayed size, once it decodes whole; a 400 naming the file otherwise."""
    formats = ", ".join(IMAGE_FORMATS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                kind, (width, height) = probe.format, probe.size
                if kind not in IMAGE_FORMATS:
                    raise BadRequest(f"file {name!r} is a {kind} image: send {formats}")
                if width * height > MAX_PIXELS:
                    raise BadRequest(f"file {name!r} is {width}x{height} pixels, more than {MAX_PIXELS:,}:"
                                     " scale it down")
                probe.verify()  # checksums and structure
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # every pixel: a truncated file fails here
                width, height = ImageOps.exif_transpose(image).size
    except UnidentifiedImageError:
        raise BadRequest(f"file {name!r} is not an image: send {formats}") from None
    except BadRequest:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadRequest(f"file {name!r} is truncated or damaged ({str(err)[:120]}): send it again") from None
    if min(width, height) < min_px:
        raise BadRequest(f"file {name!r} is {width}x{height} pixels, too small to train on: images need at"
                         f" least {min_px} pixels on the shorter side")
    return width, height


def check_images(files: list[Any], form: Mapping[str, str], *, max_images: int, min_px: int,
                 max_name_bytes: int, trigger_word: str) -> list[TrainingImage]:
    """Every image of the request with its caption: the form field named after its file name
    (Helix's convention), else the trigger word."""
    if not files:
        raise BadRequest("an image fine-tune needs images: send them as files (multipart), each with a"
                         " caption in a field named after its file")
    images: list[TrainingImage] = []
    seen: set[str] = set()
    for n, upload in enumerate(files):
        name = image_name(upload.filename, max_name_bytes)
        if n >= max_images:
            raise BadRequest(f"file {name!r} is image {n + 1}: at most {max_images} images per fine-tune")
        if name in seen:
            raise BadRequest(f"two files are named {name!r}: give each image its own name")
        seen.add(name)
        given = form.get(upload.filename) if upload.filename in form else form.get(name)
        caption = text_field({name: given or ""}, name, MAX_CAPTION_CHARS)
        data = upload.stream.read()
        width, height = _decode(name, data, min_px)
        images.append(TrainingImage(name, caption_for(caption, trigger_word), data, width, height))
    return images
