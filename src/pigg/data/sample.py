"""The one in-memory sample of pigg: chat messages with screenshots, the user, and the target if known."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pigg.errors import DataError

ImageRef = str | bytes | Image.Image  # a path (relative to the data folder), encoded bytes, or a PIL image


@dataclass
class Target:
    """Where the right action is, in screenshot pixels."""

    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Target | None:
        if not raw:
            return None
        point = raw.get("point")
        box = raw.get("box")
        return cls(
            point=tuple(float(v) for v in point) if point is not None else None,
            box=tuple(float(v) for v in box) if box is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "point": list(self.point) if self.point else None,
            "box": list(self.box) if self.box else None,
        }


@dataclass
class Sample:
    """Messages in the normalised chat form (every content a list of {"type": "image"|"text", ...} items)."""

    messages: list[dict[str, Any]]
    user_id: int | None = None
    target: Target | None = None
    source: str = "<memory>"  # "file#index": where a problem with this sample is reported
    base_dir: Path | None = None  # relative image paths are resolved against this folder
    meta: dict[str, Any] = field(default_factory=dict)

    def image_refs(self) -> list[ImageRef]:
        return [
            item["image"]
            for message in self.messages
            for item in message["content"]
            if isinstance(item, dict) and item.get("type") == "image"
        ]

    def answer(self) -> str:
        """The text of the last assistant turn."""
        for message in reversed(self.messages):
            if message["role"] == "assistant":
                return "".join(i.get("text", "") for i in message["content"] if i.get("type") == "text")
        return ""


def resolve_image_path(ref: str, base_dir: Path | None) -> Path:
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def load_image(ref: ImageRef, base_dir: Path | None = None) -> Image.Image:
    """Decode an image reference to RGB. Raises DataError with the cause on a missing or corrupt image."""
    try:
        if isinstance(ref, Image.Image):
            image = ref
        elif isinstance(ref, bytes | bytearray):
            image = Image.open(io.BytesIO(ref))
        elif isinstance(ref, str):
            path = resolve_image_path(ref, base_dir)
            if not path.is_file():
                raise DataError(f"image file {path} does not exist")
            image = Image.open(path)
        else:
            raise DataError(f"image must be a path, bytes or a PIL image, not {type(ref).__name__}")
        image.load()
    except DataError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DataError(f"image cannot be decoded: {type(exc).__name__}: {exc}") from None
    return image.convert("RGB") if image.mode != "RGB" else image


def image_size(ref: ImageRef, base_dir: Path | None = None) -> tuple[int, int]:
    """(width, height) read from the header, and the file's structure checked, without decoding pixels."""
    try:
        if isinstance(ref, Image.Image):
            return ref.size
        if isinstance(ref, bytes | bytearray):
            stream: Any = io.BytesIO(ref)
        elif isinstance(ref, str):
            stream = resolve_image_path(ref, base_dir)
            if not stream.is_file():
                raise DataError(f"image file {stream} does not exist")
        else:
            raise DataError(f"image must be a path, bytes or a PIL image, not {type(ref).__name__}")
        with Image.open(stream) as image:
            size = image.size
            image.verify()
        return size
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"image cannot be read: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one sample: where it is and what is wrong."""

    source: str
    cause: str

    def __str__(self) -> str:
        return f"{self.source}: {self.cause}"
