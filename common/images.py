"""The one image loader: a PIL image, a path or a `{"bytes", "path"}` dict, checked before any model sees it.

    check_image(image, base_dir)  -> the image with its path resolved, after the checks below (validation)
    open_header(image)            -> the lazily opened image after the size checks, nothing decoded (budgeting)
    load_image(image, base_dir)   -> an RGB PIL image, after the same checks (scoring, sampling)

Checks, each an `ImageError` whose `problem` names the class (the reason skips are counted under):

* ``image file not found``: a path that does not exist.
* ``cannot decode image``: bytes PIL cannot read (corrupt or truncated file, not an image).
* ``image has too many pixels``: more than `max_image_pixels` (default `MAX_IMAGE_PIXELS`, 100 M, set with the
  `VLRM_MAX_IMAGE_PIXELS` environment variable). Checked on the header, before anything is decoded, so a
  20000x20000 "decompression bomb" costs nothing; the processor would shrink such an image anyway. PIL's own limit
  (`Image.MAX_IMAGE_PIXELS`, used when `datasets` decodes) is raised to it if lower.
* ``image aspect ratio over 200``: Qwen-VL's `smart_resize` raises a ValueError on it at the processor call.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from PIL import Image

from common.errors import InputError

MAX_IMAGE_PIXELS = int(os.environ.get("VLRM_MAX_IMAGE_PIXELS", 100_000_000))
# Images that pass our check are decoded elsewhere too (`datasets.Image`): PIL must not refuse what we accepted.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, MAX_IMAGE_PIXELS)
MAX_ASPECT_RATIO = 200  # Qwen2-VL / Qwen2.5-VL `smart_resize`: "absolute aspect ratio must be smaller than 200"

NOT_FOUND = "image file not found"
CANNOT_DECODE = "cannot decode image"
TOO_MANY_PIXELS = "image has too many pixels"
BAD_ASPECT_RATIO = f"image aspect ratio over {MAX_ASPECT_RATIO}"


class ImageError(InputError):
    """An image that cannot be used; `problem` is one of the classes in the module docstring."""

    def __init__(self, problem: str, detail: str):
        self.problem, self.detail = problem, detail
        super().__init__(f"{problem} ({detail})")


def resolve_image(image: Any, base_dir: str | None = None) -> Any:
    """The image with a relative path (bare or in a dict without bytes) joined to `base_dir`."""
    if isinstance(image, str | os.PathLike):
        return os.path.join(base_dir, image) if base_dir and not os.path.isabs(image) else str(image)
    if isinstance(image, Mapping) and not image.get("bytes") and image.get("path"):
        return resolve_image(image["path"], base_dir)
    return image


def _open(image: Any) -> tuple[Image.Image, str]:
    """The lazily opened PIL image (header read, pixels not decoded) and how to name it in errors."""
    if isinstance(image, Image.Image):
        return image, "in-memory image"
    if isinstance(image, str | os.PathLike):
        if not os.path.isfile(image):
            raise ImageError(NOT_FOUND, repr(str(image)))
        source, name = image, repr(str(image))
    elif isinstance(image, Mapping) and image.get("bytes"):
        source, name = io.BytesIO(image["bytes"]), f"{len(image['bytes'])} bytes"
    else:
        raise TypeError(f"expected a PIL image, a path or {{'bytes': ...}}, got {type(image).__name__}")
    try:
        with warnings.catch_warnings():  # our own pixel check below replaces PIL's bomb check
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return Image.open(source), name
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(CANNOT_DECODE, f"{name}: {e}") from e


def _check_size(im: Image.Image, name: str, max_image_pixels: int | None) -> None:
    width, height = im.size
    limit = MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels
    if width * height > limit:
        raise ImageError(TOO_MANY_PIXELS, f"{name}: {width}x{height} = {width * height} pixels > {limit}; "
                         "set VLRM_MAX_IMAGE_PIXELS to allow more")  # fmt: skip
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(BAD_ASPECT_RATIO, f"{name}: {width}x{height}; Qwen-VL's resize refuses it")


@contextmanager
def open_header(image: Any, base_dir: str | None = None, max_image_pixels: int | None = None) -> Iterator[Image.Image]:
    """The lazily opened image (its header read, no pixel decoded) after the size and aspect-ratio checks: what a
    caller needs to budget memory before decoding. Closed on exit.

    Raises:
        ImageError: as `check_image`, but without reading the data.
    """
    image = resolve_image(image, base_dir)
    im, name = _open(image)
    try:
        _check_size(im, name, max_image_pixels)
        yield im
    finally:
        if im is not image:
            im.close()


def check_image(image: Any, base_dir: str | None = None, max_image_pixels: int | None = None) -> Any:
    """Return `image` (paths resolved against `base_dir`) after checking that it exists, decodes, is not too large
    and has an aspect ratio Qwen-VL accepts.

    Raises:
        ImageError: one of the module docstring's classes. TypeError: not an image form at all.
    """
    image = resolve_image(image, base_dir)
    im, name = _open(image)
    _check_size(im, name, max_image_pixels)
    if isinstance(image, Image.Image):
        return image
    try:
        with im:
            im.verify()  # reads the data and checks it (CRCs etc.) without decoding pixels
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(CANNOT_DECODE, f"{name}: {e}") from e
    return image


def load_image(image: Any, base_dir: str | None = None, max_image_pixels: int | None = None) -> Image.Image:
    """An RGB PIL image from any accepted form, after the checks of `check_image`.

    Raises:
        ImageError: as `check_image`.
    """
    image = resolve_image(image, base_dir)
    im, name = _open(image)
    _check_size(im, name, max_image_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(CANNOT_DECODE, f"{name}: {e}") from e
    finally:
        if im is not image:
            im.close()
    return rgb


def image_bytes(image: Any, base_dir: str | None = None) -> dict:
    """Any accepted form as `{"bytes", "path"}` (what Parquet and `datasets` folders embed): a PIL image as PNG,
    a file's own bytes."""
    image = resolve_image(image, base_dir)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}
    if isinstance(image, str | os.PathLike):
        if not os.path.isfile(image):
            raise ImageError(NOT_FOUND, repr(str(image)))
        with open(image, "rb") as f:
            return {"bytes": f.read(), "path": os.path.basename(image)}
    if isinstance(image, Mapping) and image.get("bytes"):
        return {"bytes": image["bytes"], "path": image.get("path")}
    raise TypeError(f"cannot store an image of type {type(image).__name__}")
