"""Images at the HTTP boundary: turn a request's image reference into a PIL image, or refuse it with a clear error.

A reference is a base64 data URI (`data:image/png;base64,...`), a path (only with an image root, and only inside it)
or an http(s) URL (only when URLs are allowed). Every limit is checked before the pixels are decoded: the encoded
size and the decoded byte count here, then `common.images.load_image` checks the header's width x height (no
decompression bomb is decoded) and the aspect ratio Qwen's resize accepts. Each refusal carries its HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from common.images import BAD_ASPECT_RATIO, CANNOT_DECODE, TOO_MANY_PIXELS, ImageError, load_image


class ImageRefused(ValueError):
    """An image the server will not read; `status` is the HTTP status, `kind` the error type."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_image"):
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass
class ImagePolicy:
    """What the server accepts as an image."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    image_root: str | None = None
    allow_urls: bool = False
    url_timeout_s: float = 10.0


def read_image_bytes(ref: str, policy: ImagePolicy) -> bytes:
    """The encoded image bytes behind `ref`, within `policy.max_image_bytes`."""
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
    if ref.startswith(("http://", "https://")):
        if not policy.allow_urls:
            raise ImageRefused("remote image URLs are refused (start the server with --allow_urls)", 403, "url_refused")
        return _fetch(ref, policy)
    if "://" in ref:
        raise ImageRefused(f"unsupported image URL scheme in {ref[:40]!r}", kind="url_refused")
    return _read_path(ref, policy)


def _read_path(ref: str, policy: ImagePolicy) -> bytes:
    if policy.image_root is None:
        raise ImageRefused("image paths are refused (start the server with --image_root DIR)", 403, "path_refused")
    root = Path(policy.image_root).resolve()
    path = (root / ref).resolve()  # an absolute ref replaces root, then must still be inside it
    if not path.is_relative_to(root):
        raise ImageRefused(f"image path {ref!r} is outside the image root", 403, "path_refused")
    if not path.is_file():
        raise ImageRefused(f"image path {ref!r} does not exist under the image root", 404, "image_not_found")
    if path.stat().st_size > policy.max_image_bytes:
        raise ImageRefused(f"image larger than {policy.max_image_bytes} bytes", 413, "image_too_large")
    return path.read_bytes()


def _fetch(url: str, policy: ImagePolicy) -> bytes:
    import httpx

    data = bytearray()
    try:
        with httpx.stream("GET", url, timeout=policy.url_timeout_s, follow_redirects=False) as r:
            if r.status_code != 200:
                raise ImageRefused(f"fetching {url[:80]!r} returned HTTP {r.status_code}", kind="image_fetch_failed")
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > policy.max_image_bytes:
                    raise ImageRefused(f"image larger than {policy.max_image_bytes} bytes", 413, "image_too_large")
    except httpx.HTTPError as e:
        raise ImageRefused(f"fetching {url[:80]!r} failed: {e}", kind="image_fetch_failed") from None
    return bytes(data)


_STATUS = {TOO_MANY_PIXELS: (413, "image_too_large"), CANNOT_DECODE: (400, "corrupt_image"),
           BAD_ASPECT_RATIO: (400, "invalid_image")}  # fmt: skip


def open_checked(data: bytes, policy: ImagePolicy) -> Image.Image:
    """Decode `data` into an RGB image with the common loader's checks (size on the header, before decoding)."""
    try:
        return load_image({"bytes": data}, max_image_pixels=policy.max_image_pixels)
    except ImageError as e:
        status, kind = _STATUS.get(e.problem, (400, "invalid_image"))
        detail = e.detail.split("; set ")[0]  # the env-var hint is for offline jobs: the server's limit is a flag
        raise ImageRefused(f"{e.problem} ({detail})", status, kind) from None


def load_request_image(ref: str, policy: ImagePolicy) -> Image.Image:
    """`open_checked(read_image_bytes(ref))`: the only way a request's image becomes pixels."""
    return open_checked(read_image_bytes(ref, policy), policy)


def to_data_uri(image: Image.Image) -> str:
    """A lossless PNG data URI of `image` (what the client sends)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
