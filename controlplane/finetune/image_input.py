"""What an image fine-tune request may send, checked before anything is stored: every file is
decoded with Pillow (no torch here), and a non-image, a truncated or damaged image, one too small
to train on, one that decodes to more pixels than the limits allow, or one past the configured
count is a 400 that names the file.

Sizes are read from the files' headers first (Image.open does not decode), so a small file that
claims a huge picture (a decompression bomb) is refused before a pixel is decoded; the decoding
itself runs off the event loop (controlplane/http/off_loop.py)."""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Any, Mapping

from PIL import ExifTags, Image, UnidentifiedImageError
from pydantic import ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from controlplane.errors import BadRequest
from controlplane.http.fields import text_field
from controlplane.http.forms import Text, hyperparameter_form
from controlplane.http.off_loop import run_off_loop
from controlplane.sessions.input import SessionKind
from controlplane.storage.filestore import user_path
from shared.image_finetune import (
    DEFAULT_TRIGGER_WORD,
    HYPERPARAMETERS,
    IMAGE_FORMATS,
    INTEGER_HYPERPARAMETERS,
    MAX_CAPTION_CHARS,
    caption_for,
)

_TRIGGER = re.compile(r"[A-Za-z0-9_-]{1,40}")
# EXIF orientations that turn the picture a quarter: displayed, its width and height swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


@dataclass
class TrainingImage:
    name: str          # the base name it is stored under
    caption: str       # as given, or the trigger word
    data: bytes        # the upload as sent (its EXIF rotation is applied when it is trained on)
    width: int         # as displayed, after EXIF rotation
    height: int


@dataclass(frozen=True)
class PixelLimits:
    min_px: int        # fewest pixels on the shorter side
    per_image: int     # most decoded pixels (width x height) of one image
    total: int         # most decoded pixels of all the request's images together


ImageHyperparameters = hyperparameter_form("ImageHyperparameters", HYPERPARAMETERS, INTEGER_HYPERPARAMETERS)


class ImageFinetuneForm(SessionKind, ImageHyperparameters):
    """POST /api/v1/sessions in finetune mode, type image: the images ride beside it as files,
    each captioned by the form field named after its file (read by `check_images`)."""

    model_config = ConfigDict(extra="allow")  # the captions, named after the files

    input: Text = ""
    name: Text = Field("", max_length=200)
    model_name: Text = Field("", max_length=500)
    trigger_word: Annotated[str, StringConstraints(strip_whitespace=True, pattern=f"^{_TRIGGER.pattern}$")] = Field(
        DEFAULT_TRIGGER_WORD, description="one word of at most 40 letters, digits, '_' or '-'")
    steps: Any = Field(None, description="refused: a fine-tune's length is 'training_steps'")

    @field_validator("steps")
    @classmethod
    def _not_denoising_steps(cls, value: Any) -> None:
        if value is not None:
            raise PydanticCustomError("steps", "is the number of denoising steps of a generated image: a"
                                      " fine-tune's length is 'training_steps'")
        return None

    def captions(self) -> dict[str, Any]:
        """The fields this model does not name: each image's caption, under its file's name."""
        return dict(self.model_extra or {})

    def options(self) -> dict[str, Any]:
        return {"hyperparameters": self.hyperparameters(), "trigger_word": self.trigger_word}


def image_name(filename: str, max_name_bytes: int) -> str:
    name = PurePosixPath(filename.replace("\\", "/")).name.strip()
    if not name or name in (".", ".."):
        raise BadRequest(f"file {filename[:80]!r} has no usable name")
    user_path(name, max_name_bytes=max_name_bytes, allow_root=False)
    return name


def _damaged(name: str, err: BaseException) -> BadRequest:
    return BadRequest(f"file {name!r} is truncated or damaged ({str(err)[:120]}): send it again")


def _header_size(name: str, data: bytes, limits: PixelLimits) -> tuple[int, int]:
    """Width and height as the file's header states them, within the limits; nothing decoded."""
    formats = ", ".join(IMAGE_FORMATS)
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit (89 million pixels); ours, below, decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                kind, (width, height) = probe.format, probe.size
    except UnidentifiedImageError:
        raise BadRequest(f"file {name!r} is not an image: send {formats}") from None
    except Image.DecompressionBombError:  # past twice Pillow's limit, it refuses to open it at all
        raise BadRequest(f"file {name!r} decodes to more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; the limit"
                         f" is {limits.per_image:,} pixels an image: scale it down") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise _damaged(name, err) from None
    if kind not in IMAGE_FORMATS:
        raise BadRequest(f"file {name!r} is a {kind} image: send {formats}")
    if width * height > limits.per_image:
        raise BadRequest(f"file {name!r} is {width}x{height}: it decodes to {width * height:,} pixels; the limit"
                         f" is {limits.per_image:,} pixels an image: scale it down")
    if min(width, height) < limits.min_px:
        raise BadRequest(f"file {name!r} is {width}x{height} pixels, too small to train on: images need at"
                         f" least {limits.min_px} pixels on the shorter side")
    return width, height


def _decoded_size(name: str, data: bytes) -> tuple[int, int]:
    """The displayed size (EXIF rotation applied) of an image that decodes whole."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # checksums and structure
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # every pixel: a truncated file fails here
            width, height = image.size
            if image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS:
                width, height = height, width
    except (OSError, SyntaxError, ValueError) as err:
        raise _damaged(name, err) from None
    return width, height


def measure_images(uploads: list[tuple[str, bytes]], limits: PixelLimits) -> list[tuple[int, int]]:
    """Each upload's displayed size. Every header is read (and held to the limits) before the
    first image is decoded, so a request past the limits costs no decoding."""
    total = 0
    for name, data in uploads:
        width, height = _header_size(name, data, limits)
        total += width * height
        if total > limits.total:
            raise BadRequest(f"file {name!r} brings the images to {total:,} decoded pixels; the limit is"
                             f" {limits.total:,} pixels per fine-tune: scale the images down or send fewer")
    return [_decoded_size(name, data) for name, data in uploads]


def check_images(files: list[Any], captions: Mapping[str, Any], *, max_images: int, limits: PixelLimits,
                 max_name_bytes: int, trigger_word: str) -> list[TrainingImage]:
    """Every image of the request with its caption: the form field named after its file name
    (Helix's convention), else the trigger word. Pillow's work runs off the event loop."""
    if not files:
        raise BadRequest("an image fine-tune needs images: send them as files (multipart), each with a"
                         " caption in a field named after its file")
    uploads: list[tuple[str, str, bytes]] = []
    seen: set[str] = set()
    for n, upload in enumerate(files):
        name = image_name(upload.filename, max_name_bytes)
        if n >= max_images:
            raise BadRequest(f"file {name!r} is image {n + 1}: at most {max_images} images per fine-tune")
        if name in seen:
            raise BadRequest(f"two files are named {name!r}: give each image its own name")
        seen.add(name)
        given = captions.get(upload.filename) if upload.filename in captions else captions.get(name)
        caption = text_field({name: given or ""}, name, MAX_CAPTION_CHARS)
        uploads.append((name, caption, upload.stream.read()))
    sizes = run_off_loop(measure_images, [(name, data) for name, _, data in uploads], limits)
    return [TrainingImage(name, caption_for(caption, trigger_word), data, width, height)
            for (name, caption, data), (width, height) in zip(uploads, sizes)]
