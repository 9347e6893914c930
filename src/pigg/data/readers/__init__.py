"""Readers: every format pigg reads, into the one `Sample` type, with problems named by file and row.

- own: pigg's own, per-user pickles (seed 000) and JSONL;
- chats: LLaMA-Factory and ms-swift rows (seeds 001, 002);
- hf: Hugging Face datasets on disk (seed 003);
- screenspot: the ScreenSpot grounding benchmarks;
- tables: classification tables (seed 004);
- detect: which of them a path holds.
JSON rows of every format go through `rows.json_rows`, so one kind of damage gets one answer.
"""

from __future__ import annotations

from pathlib import Path

from pigg.data.readers import chats, hf, own, screenspot
from pigg.data.readers.detect import detect_format
from pigg.data.readers.rows import ReadResult
from pigg.errors import DataError


def read_samples(
    path: str | Path,
    users: list[int] | None,
    fmt: str = "auto",
    dataset: str | None = None,
    images: str | None = None,
) -> ReadResult:
    """Read `path` in its format (`fmt`, or detected), keeping only `users` (None: all).

    pigg's own: a folder of user_<id>.pkl files or a .jsonl file. The others (LLaMA-Factory, ms-swift,
    Hugging Face datasets, ScreenSpot) carry no user ids unless their rows have a `user_id`."""

    path = Path(path)
    if not path.exists():
        raise DataError(f"data.path {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "pigg":
        if path.is_dir():
            return own.read_pickle_dir(path, users)
        if path.is_file() and path.suffix == ".jsonl":
            return own.read_jsonl(path, users)
        raise DataError(f"data.path {path} is neither a folder of user_<id>.pkl files nor a .jsonl file")
    if fmt in ("llamafactory", "swift"):
        result = chats.read_llamafactory(path, dataset)
    elif fmt == "hf":
        result = hf.read_hf(path)
    elif fmt == "screenspot":
        result = screenspot.read_screenspot(path, images)
    else:
        raise DataError(f"data.format {fmt!r} is not one pigg reads")
    if users is not None:
        if not any(s.user_id is not None for s in result.samples):
            raise DataError(
                f"{path} ({fmt}) has no user ids: select every sample (data.train_users: all) or add user_id"
            )
        result.samples = [s for s in result.samples if s.user_id in users]
    return result
