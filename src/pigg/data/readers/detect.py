"""Which format a path holds, from what it holds: file names, then what the rows' keys show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pigg.data.readers.chats import DATASET_INFO
from pigg.data.readers.rows import PLACEHOLDER, json_rows
from pigg.errors import DataError

# what a row's keys show; rows that could be either (text-only chat turns) show nothing
ROW_STYLES = {
    "screenspot": "ScreenSpot annotations",
    "placeholder": "LLaMA-Factory / ms-swift rows (images in an images list, <image> placeholders)",
    "pigg": "pigg rows (image items in messages, or a target)",
}


def _row_style(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if "img_filename" in row:
        return "screenspot"
    if "images" in row or "conversations" in row or {"query", "response"} <= row.keys():
        return "placeholder"
    if {"instruction", "output"} <= row.keys():
        return "placeholder"
    turns = row.get("messages")
    contents = [t.get("content") for t in turns if isinstance(t, dict)] if isinstance(turns, list) else []
    if any(isinstance(c, str) and PLACEHOLDER in c for c in contents):
        return "placeholder"
    if "target" in row or any(isinstance(c, list) for c in contents):
        return "pigg"
    return None


def _ranges(numbers: list[int]) -> str:
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:3])
    return shown + (f" and {len(runs) - 3} more stretches" if len(runs) > 3 else "")


def _file_style(path: Path) -> str | None:
    """The one style every row of the file shows (None: no row shows one); rows that disagree are refused
    rather than read as the first row's format."""
    seen: dict[str, list[int]] = {}
    for row in json_rows(path)[0]:  # unreadable rows are the reader's to report
        style = _row_style(row.value)
        if style is not None:
            seen.setdefault(style, []).append(row.number)
    if len(seen) > 1:
        what = "line" if path.suffix == ".jsonl" else "row"

        def rows(numbers: list[int]) -> str:
            many = len(numbers) > 1
            return f"{what}{'s' if many else ''} {_ranges(numbers)} look{'' if many else 's'} like"

        parts = "; ".join(f"{rows(numbers)} {ROW_STYLES[s]}" for s, numbers in seen.items())
        raise DataError(
            f"{path}: its rows disagree on the format: {parts}. Make them one format, or set data.format "
            "(pigg, llamafactory, swift, screenspot) to read every row as that one"
        )
    return next(iter(seen), None)


def detect_format(path: Path) -> str:
    """pigg (user_<id>.pkl folders, pigg JSONL), llamafactory (also ms-swift rows), hf or screenspot, from
    what the path holds."""
    if path.is_dir():
        # before dataset_info.json: save_to_disk writes one of its own (with state.json beside it)
        if any((path / m).exists() for m in ("state.json", "dataset_dict.json")):
            return "hf"
        if (path / DATASET_INFO).exists():
            return "llamafactory"
        if any(path.glob("*.parquet")) or any(path.glob("*.arrow")):
            return "hf"
        return "pigg"
    if path.name == DATASET_INFO:
        return "llamafactory"
    if path.suffix in (".parquet", ".arrow"):
        return "hf"
    style = _file_style(path) if path.suffix in (".json", ".jsonl") else None
    if style == "screenspot":
        return "screenspot"
    if path.suffix == ".json" or style == "placeholder":
        return "llamafactory"
    return "pigg"
