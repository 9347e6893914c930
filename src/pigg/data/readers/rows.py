"""What every reader shares: the result type, the normalised message form, and the one reader of JSON
rows (JSONL lines or a JSON list) that every JSON-based reader goes through, so the same damage gets the
same answer in every format: a line that is not UTF-8 or not JSON is a problem naming `file:line`, and
the rest of the file is still read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pigg.data.sample import Problem, Sample
from pigg.errors import DataError

ROLES = ("system", "user", "assistant")
PLACEHOLDER = "<image>"  # where LLaMA-Factory's and ms-swift's rows put an image in the text


@dataclass
class ReadResult:
    samples: list[Sample]
    problems: list[Problem]


@dataclass(frozen=True)
class JsonRow:
    source: str  # "file:line" (JSONL, 1-based) or "file#index" (a JSON list, 0-based)
    number: int  # the line or the index
    value: Any


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def strict_json(text: str):
    """json.loads, refusing NaN and Infinity (Python's json accepts them; JSON has no such numbers)."""
    return json.loads(text, parse_constant=_no_constant)


def json_rows(path: Path) -> tuple[list[JsonRow], list[Problem]]:
    """The rows of a JSONL file (one per non-blank line) or of a JSON file holding a list. A JSONL line that
    is not UTF-8 or not JSON is a problem at its line; a JSON file that cannot be read as a list of rows
    is a DataError (no row of it can be trusted)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if path.suffix == ".json":
        try:
            rows = strict_json(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a JSON data file holds a list of rows, not a {type(rows).__name__}")
        return [JsonRow(f"{path}#{i}", i, row) for i, row in enumerate(rows)], []
    out: list[JsonRow] = []
    problems: list[Problem] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        source = f"{path}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(Problem(source, f"malformed line: not valid UTF-8 (byte {exc.start})"))
            continue
        if not text.strip():
            continue
        try:
            out.append(JsonRow(source, number, strict_json(text)))
        except ValueError as exc:
            cause = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            problems.append(Problem(source, f"malformed line: not valid JSON ({cause})"))
    return out, problems


def _unicode(text: str, where: str) -> str:
    """`text` if it is valid Unicode: a lone surrogate (from a JSON escape, or a mis-decoded file) would
    only fail later, inside the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where} is not valid Unicode (a lone surrogate at character {exc.start})"
        ) from None
    return text


def normalise_messages(raw: Any) -> list[dict[str, Any]]:
    """Bring a message list to the normalised form; raise ValueError naming what is malformed.

    A content item is a dict with "type" "image" or "text"; an item without "type" is read by its key
    ("image" or "text"), as several tools write them."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"messages must be a non-empty list of turns, got {type(raw).__name__}")
    out = []
    for t, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {t} is a {type(turn).__name__}, not a dict with 'role' and 'content'")
        role = turn.get("role")
        if role not in ROLES:
            raise ValueError(f"turn {t} has role {role!r}; expected one of {', '.join(ROLES)}")
        content = turn.get("content")
        if isinstance(content, str):
            items = [{"type": "text", "text": _unicode(content, f"turn {t} text")}]
        elif isinstance(content, list):
            items = []
            for i, item in enumerate(content):
                if isinstance(item, dict) and (item.get("type") == "image" or "image" in item):
                    image = item.get("image")
                    if image is None:
                        raise ValueError(f"turn {t} item {i} is an image with no 'image' value")
                    if isinstance(image, str):
                        _unicode(image, f"turn {t} item {i} image path")
                    items.append({"type": "image", "image": image})
                elif isinstance(item, dict) and (item.get("type") == "text" or "text" in item):
                    if not isinstance(item.get("text"), str):
                        raise ValueError(f"turn {t} item {i} has a non-string 'text'")
                    items.append({"type": "text", "text": _unicode(item["text"], f"turn {t} item {i} text")})
                else:
                    raise ValueError(f"turn {t} item {i} is neither an image nor a text item: {item!r:.80}")
        else:
            raise ValueError(f"turn {t} content must be a string or a list, got {type(content).__name__}")
        out.append({"role": role, "content": items})
    return out
