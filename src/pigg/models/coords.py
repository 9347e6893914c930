"""Image geometry shared by rendering, synthesis and evaluation: how a processor resizes a screenshot.

Qwen-VL processors resize every image so both sides are multiples of patch*merge pixels and the area lies
within [min_pixels, max_pixels]; one image token then covers (patch*merge)^2 pixels.
"""

from __future__ import annotations

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize


def processor_resize(image_processor, width: int, height: int) -> tuple[int, int]:
    """(width, height) of a `width` x `height` screenshot after the processor's resize."""
    size = image_processor.size
    factor = image_processor.patch_size * image_processor.merge_size
    new_h, new_w = smart_resize(
        height, width, factor=factor, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]
    )
    return new_w, new_h


def image_token_count(image_processor, width: int, height: int) -> int:
    """How many image tokens the LLM sees for a `width` x `height` screenshot."""
    new_w, new_h = processor_resize(image_processor, width, height)
    cell = image_processor.patch_size * image_processor.merge_size
    return (new_w // cell) * (new_h // cell)


def to_relative_1000(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    """Screenshot pixels → Qwen3-VL's integer 0-1000 coordinates (clamped to the range)."""
    rx = min(max(round(x / width * 1000), 0), 1000)
    ry = min(max(round(y / height * 1000), 0), 1000)
    return rx, ry
