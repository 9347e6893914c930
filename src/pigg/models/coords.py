"""Coordinate conventions: the only place that converts between screenshot pixels and what a model says.

Targets are stored in screenshot pixels. They become model coordinates only when a sample is rendered,
and model answers become pixels only when they are read, per family:

- `relative_1000` (Qwen3-VL): integers relative to the image, x/width*1000. Qwen's public material says
  both 0-1000 and 0-999; pigg writes round(x/width*1000) clamped to [0, 1000] and reads value/1000
  clamped to the same range, so an answer in either convention lands within 0.1% of the width.
- `resized_pixels` (Qwen2.5-VL): absolute pixels of the image as the processor resized it (both sides
  multiples of patch*merge, area within [min_pixels, max_pixels]); reading inverts that resize.

Model coordinates round-trip exactly (model → pixels → model); pixels round-trip to within half a model
unit (at most width/2000 px for Qwen3-VL, width/(2*resized_width) px for Qwen2.5-VL).

Qwen-VL processors resize every image that way; one image token then covers (patch*merge)^2 pixels.
"""

from __future__ import annotations

from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from pigg.models.families import Family

RELATIVE_MAX = 1000


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


def _clamp(value: float, high: float) -> float:
    return min(max(value, 0), high)


def to_relative_1000(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    """Screenshot pixels → Qwen3-VL's integer 0-1000 coordinates (clamped to the range)."""
    rx = round(_clamp(x / width * RELATIVE_MAX, RELATIVE_MAX))
    ry = round(_clamp(y / height * RELATIVE_MAX, RELATIVE_MAX))
    return rx, ry


def _model_frame(family: Family, image_processor, width: int, height: int) -> tuple[float, float]:
    """The size of the frame a family's coordinates live in, for a `width` x `height` screenshot."""
    if family.coordinates == "relative_1000":
        return RELATIVE_MAX, RELATIVE_MAX
    if family.coordinates == "resized_pixels":
        return processor_resize(image_processor, width, height)
    raise ValueError(f"unknown coordinate convention {family.coordinates!r}")


def to_model(
    point: tuple[float, float], size: tuple[int, int], family: Family, image_processor
) -> tuple[int, int]:
    """A point in screenshot pixels → the integers the model is trained to answer."""
    width, height = size
    frame_w, frame_h = _model_frame(family, image_processor, width, height)
    x = round(_clamp(point[0] / width * frame_w, frame_w))
    y = round(_clamp(point[1] / height * frame_h, frame_h))
    return x, y


def from_model(
    point: tuple[float, float], size: tuple[int, int], family: Family, image_processor
) -> tuple[float, float]:
    """A point the model answered → screenshot pixels (clamped to the screenshot)."""
    width, height = size
    frame_w, frame_h = _model_frame(family, image_processor, width, height)
    x = _clamp(point[0], frame_w) / frame_w * width
    y = _clamp(point[1], frame_h) / frame_h * height
    return x, y


def format_point(point: tuple[int, int]) -> str:
    """The answer text pigg trains: "(x, y)", the form both Qwen-VL families produce for a click."""
    return f"({point[0]}, {point[1]})"
