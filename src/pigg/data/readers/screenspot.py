"""The public grounding benchmarks: ScreenSpot (v1, v2) and ScreenSpot-Pro annotation files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pigg.data.readers.rows import ReadResult, json_rows, normalise_messages
from pigg.data.sample import Problem, Sample, Target, finite_numbers

SCREENSPOT_PLATFORMS = ("mobile", "desktop", "web")


def _screenspot_images(path: Path, images: str | Path | None) -> Path:
    """Where a ScreenSpot file's screenshots are: `images`, else the layout the benchmarks ship
    (ScreenSpot: screenspot_imgs/ beside the JSON; ScreenSpot-Pro: images/ beside annotations/)."""
    if images is not None:
        return Path(images)
    for candidate in (path.parent / "screenspot_imgs", path.parent.parent / "images", path.parent / "images"):
        if candidate.is_dir():
            return candidate
    return path.parent


def _numbers(value: Any, count: int, what: str) -> tuple[float, ...]:
    """`count` finite numbers (not booleans, not text); a ValueError says what `value` is instead."""
    numbers = finite_numbers(value, count, what)
    if numbers is None:
        raise ValueError(f"{what} must be {count} numbers, not null")
    return numbers


def _check_img_size(row: dict[str, Any], image_dir: Path) -> None:
    """ScreenSpot-Pro's boxes are in `img_size`'s pixels: a screenshot of another size would be clicked
    in the wrong place, so the row is refused (nothing is rescaled: the format does not say to)."""
    width, height = _numbers(row["img_size"], 2, "img_size")
    if width <= 0 or height <= 0:
        raise ValueError(f"img_size {row['img_size']} must be positive")
    file = image_dir / str(row["img_filename"])
    from PIL import Image

    try:
        with Image.open(file) as image:
            real = image.size
    except Exception:  # noqa: BLE001 -- a missing or damaged screenshot is validation's to report, with its row
        return
    if real != (int(width), int(height)):
        raise ValueError(
            f"img_size {int(width)}x{int(height)} but the screenshot {file.name} is {real[0]}x{real[1]}: "
            "its box would be read in the wrong pixels (refused, not rescaled)"
        )


def read_screenspot(path: Path, images: str | Path | None = None) -> ReadResult:
    """A ScreenSpot (v1, v2) or ScreenSpot-Pro annotation file as evaluation samples: the instruction on
    its screenshot, the target box (v1/v2 write [x, y, width, height], Pro [x1, y1, x2, y2] with
    img_size), the box centre as the answer to train on, and the benchmark's own categories (ui type,
    platform, application, group, source) for the report's breakdown."""
    image_dir = _screenspot_images(path, images)
    rows, problems = json_rows(path)
    samples = []
    stem = path.stem.lower()
    platform = next((p for p in SCREENSPOT_PLATFORMS if p in stem), None)
    for source, row in ((r.source, r.value) for r in rows):
        try:
            if not isinstance(row, dict):
                raise ValueError(f"a row must be an object, not {type(row).__name__}")
            missing = [k for k in ("img_filename", "bbox", "instruction") if k not in row]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            pro = "img_size" in row or "ui_type" in row
            x, y, a, b = _numbers(row["bbox"], 4, "bbox")
            if "img_size" in row:
                _check_img_size(row, image_dir)
            box = (x, y, a, b) if pro else (x, y, x + a, y + b)
            target = Target.from_dict(
                {"point": [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], "box": list(box)}
            )
            categories = {
                "ui_type": str(row.get("ui_type") or row.get("data_type") or "unknown"),
                "platform": str(row.get("platform") or platform or "unknown"),
            }
            for key, name in (("application", "application"), ("group", "group"), ("data_source", "source")):
                if row.get(key):
                    categories[name] = str(row[key])
            instruction = row["instruction"]
            if not isinstance(instruction, str) or not instruction.strip():
                raise ValueError("empty instruction")
            messages = [
                {"role": "user", "content": [{"type": "image", "image": str(row["img_filename"])},
                                             {"type": "text", "text": instruction}]},
                # the box centre in pixels; rendering writes it in the model family's coordinates
                {"role": "assistant", "content": f"({target.point[0]:.0f}, {target.point[1]:.0f})"},
            ]  # fmt: skip
            sample = Sample(normalise_messages(messages), target=target, source=source, base_dir=image_dir)
            sample.meta = {
                "answer_from_target": True,
                "kind": categories["ui_type"],
                "categories": categories,
            }
            samples.append(sample)
        except (ValueError, TypeError) as exc:
            problems.append(Problem(source, f"malformed annotation: {exc}"))
    return ReadResult(samples, problems)
