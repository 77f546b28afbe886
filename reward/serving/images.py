"""Images at the HTTP boundary: turn a request's image reference into a PIL image, or refuse it with a clear error.

A reference is a base64 data URI (`data:image/png;base64,...`), a path (only with an image root, and only inside it)
or an http(s) URL (only when URLs are allowed; fetched beforehand by `reward.serving.fetch`). Every limit is checked
before the pixels are decoded: the encoded size here, then the header's width x height (`read_header`, through
`common.images`: no decompression bomb is decoded) and the aspect ratio Qwen's resize accepts. `decode` then shrinks
the image to the size the processor would resize it to, at once, so a request holds small images, not full-size
ones. Each refusal carries its HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from common.images import BAD_ASPECT_RATIO, CANNOT_DECODE, TOO_MANY_PIXELS, ImageError, load_image, open_header


class ImageRefused(ValueError):
    """An image the server will not read; `status` is the HTTP status, `kind` the error type."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_image"):
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class ImagePolicy:
    """What the server accepts as an image, and from where."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    image_root: str | None = None
    allow_urls: bool = False
    url_allowlist: list[str] = field(default_factory=list)
    url_timeout_s: float = 10.0
    max_concurrent_fetches: int = 8


def is_url(ref: object) -> bool:
    return isinstance(ref, str) and ref.startswith(("http://", "https://"))


def read_image_bytes(ref: str, policy: ImagePolicy, fetched: dict[str, bytes] | None = None) -> bytes:
    """The encoded image bytes behind `ref`, within `policy.max_image_bytes` (URLs: taken from `fetched`)."""
    if not isinstance(ref, str) or not ref:
        raise ImageRefused(f"an image must be a non-empty string (data URI, path or URL), got {type(ref).__name__}")
    if ref.startswith("data:"):
        header, sep, payload = ref.partition(",")
        if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
            raise ImageRefused("a data URI must look like data:image/<format>;base64,<payload>", kind="invalid_base64")
        if len(payload) > (policy.max_image_bytes * 4) // 3 + 4:
            raise ImageRefused(f"image larger than {policy.max_image_bytes} bytes", 413, "image_too_large")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageRefused(f"invalid base64 in the data URI: {e}", kind="invalid_base64") from None
    if is_url(ref):
        check_url_allowed(policy)
        if fetched is None or ref not in fetched:
            raise RuntimeError(f"{ref[:80]!r} was not fetched before parsing")  # a bug in the caller
        return fetched[ref]
    if "://" in ref:
        raise ImageRefused(f"unsupported image URL scheme in {ref[:40]!r}", 403, "url_refused")
    return _read_path(ref, policy)


def check_url_allowed(policy: ImagePolicy) -> None:
    if not policy.allow_urls:
        raise ImageRefused("remote image URLs are refused (start the server with --allow_urls)", 403, "url_refused")


def _read_path(ref: str, policy: ImagePolicy) -> bytes:
    if policy.image_root is None:
        raise ImageRefused("image paths are refused (start the server with --image_root DIR)", 403, "path_refused")
    root = Path(policy.image_root).resolve()
    try:
        path = (root / ref).resolve()  # an absolute ref replaces root, then must still be inside it
        if not path.is_relative_to(root):
            raise ImageRefused(f"image path {ref[:200]!r} is outside the image root", 403, "path_refused")
        if not path.is_file():
            raise ImageRefused(f"image path {ref[:200]!r} does not exist under the image root", 404, "image_not_found")
        if path.stat().st_size > policy.max_image_bytes:
            raise ImageRefused(f"image larger than {policy.max_image_bytes} bytes", 413, "image_too_large")
        return path.read_bytes()
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a name too long, a NUL byte, unreadable
        if isinstance(e, ImageRefused):
            raise
        reason = type(e).__name__ if not isinstance(e, OSError) or e.strerror is None else e.strerror
        raise ImageRefused(f"image path {ref[:200]!r} cannot be read under the image root ({reason})", 404,
                           "image_not_found") from None  # fmt: skip


_STATUS = {TOO_MANY_PIXELS: (413, "image_too_large"), CANNOT_DECODE: (400, "corrupt_image"),
           BAD_ASPECT_RATIO: (400, "invalid_image")}  # fmt: skip


def _refused(e: ImageError) -> ImageRefused:
    status, kind = _STATUS.get(e.problem, (400, "invalid_image"))
    detail = e.detail.split("; set ")[0]  # the env-var hint is for offline jobs: the server's limit is a flag
    return ImageRefused(f"{e.problem} ({detail})", status, kind)


def read_header(data: bytes, policy: ImagePolicy) -> tuple[int, int]:
    """(width, height) from the header, after the pixel and aspect-ratio checks; no pixel is decoded."""
    try:
        with open_header({"bytes": data}, max_image_pixels=policy.max_image_pixels) as im:
            return im.size
    except ImageError as e:
        raise _refused(e) from None


def decode(data: bytes, policy: ImagePolicy, size: tuple[int, int] | None = None, resample: int = 3) -> Image.Image:
    """Decode `data` into an RGB image (the common loader's checks), shrunk at once to `size` (width, height) when
    that is smaller, with the processor's `resample` filter: the processor's own resize is then a no-op, so scores
    equal those of the full-size image."""
    try:
        image = load_image({"bytes": data}, max_image_pixels=policy.max_image_pixels)
    except ImageError as e:
        raise _refused(e) from None
    if size is not None and size[0] * size[1] < image.width * image.height:
        image = image.resize(size, resample=resample)
    return image


def load_request_image(ref: str, policy: ImagePolicy) -> Image.Image:
    """The full-size RGB image behind a data URI or path (benchmarks and tests)."""
    return decode(read_image_bytes(ref, policy), policy)


def to_data_uri(image: Image.Image) -> str:
    """A lossless PNG data URI of `image` (what the client sends)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
