"""The one in-memory sample of pigg: chat messages with screenshots, the user, and the target if known."""

from __future__ import annotations

import io
import math
import numbers
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
    def from_dict(cls, raw: Any) -> Target | None:
        """Read `{"point": [x, y], "box": [x1, y1, x2, y2]}` (either or both); ValueError says what is wrong
        with any other shape, a number that is not finite, or a box whose corners are not in order."""
        if raw is None or raw == {}:
            return None
        if not isinstance(raw, dict):
            raise ValueError(f"target must be an object with 'point' and/or 'box', not {kind_of(raw)}")
        unknown = sorted(str(k) for k in raw if k not in ("point", "box"))
        if unknown:
            raise ValueError(f"target has unknown key(s) {', '.join(unknown)}; it takes 'point' and 'box'")
        point = finite_numbers(raw.get("point"), 2, "target point [x, y]")
        box = finite_numbers(raw.get("box"), 4, "target box [x1, y1, x2, y2]")
        if box is not None and not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"target box {list(box)} must have x1 < x2 and y1 < y2")
        return cls(point=point, box=box) if point or box else None

    def outside(self, width: int, height: int) -> str | None:
        """What lies outside a width x height screenshot, in words (None: all inside)."""
        for name, values in (("point", self.point), ("box", self.box)):
            if values is None:
                continue
            xs, ys = values[0::2], values[1::2]
            if min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height:
                return f"target {name} {list(values)} lies outside the {width}x{height} screenshot"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "point": list(self.point) if self.point else None,
            "box": list(self.box) if self.box else None,
        }


def kind_of(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__} ({value!r:.40})"


def finite_numbers(raw: Any, count: int, what: str) -> tuple[float, ...] | None:
    if raw is None:
        return None
    if type(raw).__module__ == "numpy" and hasattr(raw, "tolist"):  # a pickled numpy array of numbers
        raw = raw.tolist()
    if not isinstance(raw, list | tuple) or len(raw) != count:
        raise ValueError(f"{what} must be {count} numbers, not {kind_of(raw)}")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in raw):  # numpy's too
        raise ValueError(f"{what} must be {count} numbers, not {list(raw)!r:.60}")
    if not all(math.isfinite(v) for v in raw):
        raise ValueError(f"{what} holds a number that is not finite: {list(raw)}")
    return tuple(float(v) for v in raw)


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

    def instruction(self) -> str:
        """The text of the last user turn, lower-cased with its whitespace collapsed (what was asked)."""
        for message in reversed(self.messages):
            if message["role"] == "user":
                text = " ".join(i.get("text", "") for i in message["content"] if i.get("type") == "text")
                return " ".join(text.lower().split())
        return ""


def resolve_image_path(ref: str, base_dir: Path | None) -> Path:
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _checked_pil(image: Image.Image) -> Image.Image:
    """An in-memory PIL image whose state is what PIL itself builds. Unpickling restores whatever the file
    says (PIL's __setstate__ takes it as given), so a damaged pickle can hold an image whose `info` is a
    list or whose mode PIL does not know, which only fails later, inside the processor."""
    size = image.size
    if not isinstance(image.info, dict):
        raise DataError(
            f"the pickled image is damaged: its info is a {type(image.info).__name__}, not a dict"
        )
    if image.mode not in Image.MODES:
        raise DataError(f"the pickled image is damaged: unknown mode {image.mode!r:.30}")
    if not (isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise DataError(f"the pickled image is damaged: its size is {size!r:.40}")
    return image


def load_image(ref: ImageRef, base_dir: Path | None = None) -> Image.Image:
    """Decode an image reference to RGB. Raises DataError with the cause on a missing or corrupt image."""
    try:
        if isinstance(ref, Image.Image):
            image = _checked_pil(ref)
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
            image = _checked_pil(ref)
            image.load()  # in memory already: its pixels must be there
            return image.size
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
