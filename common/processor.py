"""Qwen2.5-VL processor that works without torchvision, registered with `AutoProcessor`.

transformers 5 type-checks `Qwen2_5_VLProcessor.video_processor` against a class that only exists when torchvision
imports. The only torchvision wheel reachable here is a CUDA build that breaks `import transformers` model classes,
so we ship an image-only processor: `ProcessorMixin` derives its sub-processors from `__init__`'s signature, and
dropping `video_processor` from it is enough. Without the `AutoProcessor.register` call below,
`AutoProcessor.from_pretrained(dir)` silently returns a bare tokenizer, so every loader goes through
`load_processor`, which checks what it got.
"""

from __future__ import annotations

from transformers import (
    AutoProcessor,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
)
from transformers.image_processing_utils import SizeDict


class _ImageOnly:
    """Drops `video_processor` from `__init__`'s signature, hence from the processor's sub-processors."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )


class Qwen2_5_VLImageOnlyProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` with images and text only (no video processor, hence no torchvision)."""


class Qwen2VLImageOnlyProcessor(_ImageOnly, Qwen2VLProcessor):
    """`Qwen2VLProcessor` with images and text only, for Qwen2-VL checkpoints."""


def register_image_only_processor() -> None:
    """Make `AutoProcessor.from_pretrained` return the image-only processors for Qwen2.5-VL and Qwen2-VL folders."""
    AutoProcessor.register(Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
    AutoProcessor.register(Qwen2VLConfig, Qwen2VLImageOnlyProcessor, exist_ok=True)


def load_processor(path: str, min_pixels: int | None = None, max_pixels: int | None = None) -> ProcessorMixin:
    """Load a Qwen-VL processor from a local folder (or hub id) and check it is a real multimodal processor.

    Args:
        path: folder written by `save_pretrained`, or a hub id when the hub is reachable.
        min_pixels / max_pixels: bounds on image area; images are resized into them (Qwen's `smart_resize`).

    Raises:
        TypeError: when the folder yields a bare tokenizer instead of a processor.
    """
    register_image_only_processor()
    processor = AutoProcessor.from_pretrained(path)
    if not isinstance(processor, ProcessorMixin) or not hasattr(processor, "image_processor"):
        raise TypeError(
            f"{path} loads as {type(processor).__name__}, not a multimodal processor: the folder needs "
            "processor_config.json / preprocessor_config.json beside the tokenizer."
        )
    if min_pixels is not None or max_pixels is not None:
        # transformers 5 keeps Qwen's pixel bounds as size.shortest_edge / size.longest_edge (areas, not edges).
        size = processor.image_processor.size
        processor.image_processor.size = SizeDict(
            shortest_edge=min_pixels if min_pixels is not None else size.shortest_edge,
            longest_edge=max_pixels if max_pixels is not None else size.longest_edge,
        )
    return processor
