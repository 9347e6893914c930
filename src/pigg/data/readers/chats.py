"""Chat rows of the tools users already have (LLaMA-Factory, ms-swift), read into pigg's one `Sample` type.

- LLaMA-Factory (seed 001): JSON lists or JSONL in sharegpt style (`conversations` of `from`/`value`),
  openai style (`messages` of `role`/`content`) or alpaca style (`instruction`/`input`/`output`), each
  with an `images` list whose entries fill the `<image>` placeholders in order; or a `dataset_info.json`
  that registers the file, its formatting, columns and tags (`data.dataset` names the entry).
- ms-swift (seed 002): JSONL with `messages` and `images`, or `query`/`response` (and `history`,
  `system`).

Every row becomes the same normalised sample as pigg's pickles and JSONL, and the same validation follows.
What only these formats can get wrong is reported here, with file and row: a placeholder count that does
not match the images, an unknown role (tool turns), a missing column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pigg.data.readers.rows import PLACEHOLDER, ReadResult, json_rows, normalise_messages, strict_json
from pigg.data.sample import Problem, Sample, kind_of
from pigg.errors import DataError

DATASET_INFO = "dataset_info.json"


@dataclass
class Layout:
    """Where a row keeps its conversation (LLaMA-Factory's `columns` and `tags`, with its defaults)."""

    formatting: str = "sharegpt"  # sharegpt (also openai-style messages) | alpaca
    messages: str = "conversations"
    images: str = "images"
    system: str = "system"
    tools: str | None = None
    role_tag: str = "from"
    content_tag: str = "value"
    roles: dict[str, str] = field(
        default_factory=lambda: {
            "human": "user",
            "user": "user",
            "gpt": "assistant",
            "assistant": "assistant",
            "system": "system",
        }
    )
    # alpaca columns
    prompt: str = "instruction"
    query: str = "input"
    response: str = "output"
    history: str = "history"


def _layout_for(row: dict[str, Any]) -> Layout:
    """The layout a row's own keys show (no dataset_info.json): messages, conversations, query/response
    (ms-swift) or instruction/output (alpaca)."""
    if "messages" in row:
        return Layout(messages="messages", role_tag="role", content_tag="content")
    if "conversations" in row:
        return Layout()
    if "query" in row and "response" in row:
        return Layout(formatting="alpaca", prompt="query", query="", response="response")
    if "instruction" in row and "output" in row:
        return Layout(formatting="alpaca")
    raise ValueError(
        "found none of messages, conversations, query/response, instruction/output: "
        f"keys are {', '.join(sorted(map(str, row)))}"
    )


def _split_placeholders(text: str, images: list, used: list[int]) -> list[dict[str, Any]]:
    """Text with `<image>` placeholders as content items, each placeholder taking the next image."""
    items: list[dict[str, Any]] = []
    parts = text.split(PLACEHOLDER)
    for k, part in enumerate(parts):
        if k > 0:
            if used[0] >= len(images):
                raise ValueError(
                    f"{text.count(PLACEHOLDER)}+ <image> placeholders but {len(images)} image(s)"
                )
            items.append({"type": "image", "image": images[used[0]]})
            used[0] += 1
        if part:
            items.append({"type": "text", "text": part})
    return items


def _turns(row: dict[str, Any], layout: Layout) -> list[tuple[str, str]]:
    """(role, text) turns of a row, roles normalised."""
    if layout.formatting == "alpaca":
        turns: list[tuple[str, str]] = []
        for pair in row.get(layout.history) or []:
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                raise ValueError(
                    f"{layout.history} entries must be [query, response] pairs, not {pair!r:.60}"
                )
            turns += [("user", str(pair[0])), ("assistant", str(pair[1]))]
        prompt = row.get(layout.prompt)
        if not isinstance(prompt, str):
            raise ValueError(f"column {layout.prompt!r} must be text, not {type(prompt).__name__}")
        extra = row.get(layout.query) if layout.query else None
        if extra:
            prompt = f"{prompt}\n{extra}"  # LLaMA-Factory joins instruction and input with a newline
        answer = row.get(layout.response)
        if not isinstance(answer, str):
            raise ValueError(f"column {layout.response!r} must be text, not {type(answer).__name__}")
        return [*turns, ("user", prompt), ("assistant", answer)]
    raw = row.get(layout.messages)
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"column {layout.messages!r} must be a non-empty list of turns")
    turns = []
    for t, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise ValueError(f"turn {t} is a {type(turn).__name__}, not an object")
        tag = turn.get(layout.role_tag)
        role = layout.roles.get(tag) if isinstance(tag, str) else None
        if role is None:
            known = ", ".join(sorted(layout.roles))
            raise ValueError(
                f"turn {t} has role {tag!r}; pigg trains {known} turns (no tool or function turns)"
            )
        content = turn.get(layout.content_tag)
        if not isinstance(content, str):
            raise ValueError(f"turn {t} {layout.content_tag!r} must be text, not {type(content).__name__}")
        turns.append((role, content))
    return turns


def row_to_sample(row: Any, source: str, base_dir: Path, layout: Layout | None = None) -> Sample:
    """One LLaMA-Factory / ms-swift row as a Sample; ValueError names what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object, not {type(row).__name__}")
    layout = layout or _layout_for(row)
    images = row.get(layout.images) or []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list):
        raise ValueError(
            f"column {layout.images!r} must be a list of image paths, not {type(images).__name__}"
        )
    turns = _turns(row, layout)
    system = row.get(layout.system)
    if isinstance(system, str) and system and not any(role == "system" for role, _ in turns):
        turns.insert(0, ("system", system))
    used = [0]
    messages = [{"role": role, "content": _split_placeholders(text, images, used)} for role, text in turns]
    placeholders = sum(text.count(PLACEHOLDER) for _, text in turns)
    if placeholders != len(images):
        raise ValueError(
            f"{placeholders} <image> placeholder(s) but {len(images)} image(s) in {layout.images!r}"
        )
    for message in messages:
        if not message["content"]:  # an empty turn: one empty text item, as the chat JSONL reader keeps it
            message["content"] = [{"type": "text", "text": ""}]
    user = row.get("user_id")
    return Sample(
        normalise_messages(messages),
        user_id=user if isinstance(user, int) and not isinstance(user, bool) else None,
        source=source,
        base_dir=base_dir,
    )


def read_rows(path: Path, layout: Layout | None = None, media_dir: Path | None = None) -> ReadResult:
    """Every row of a LLaMA-Factory / ms-swift JSON or JSONL file."""
    rows, problems = json_rows(path)
    samples = []
    for source, row in ((r.source, r.value) for r in rows):
        try:
            samples.append(row_to_sample(row, source, media_dir or path.parent, layout))
        except (ValueError, TypeError) as exc:
            problems.append(Problem(source, f"malformed row: {exc}"))
    return ReadResult(samples, problems)


def _object(value: Any, where: str, info: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{info}: {where} must be an object, not {kind_of(value)}")
    return value


def _strings(value: Any, where: str, info: Path) -> dict[str, str]:
    """An object of names (LLaMA-Factory's `columns` and `tags`): every value a non-empty string."""
    value = _object(value, where, info)
    for key, item in value.items():
        if not isinstance(item, str) or not item:
            raise DataError(f"{info}: {where}.{key} must be a column or tag name (text), not {kind_of(item)}")
    return value


def _registered(info: Path, name: str | None) -> tuple[Path, Layout]:
    """The file and layout a dataset_info.json entry registers; the registry is checked as data, each
    problem named by its key path."""
    try:
        entries = strict_json(info.read_bytes().decode("utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{info}: cannot read: {exc}") from None
    entries = _object(entries, "the top level", info)
    if name is None:
        if len(entries) != 1:
            raise DataError(
                f"{info} registers {len(entries)} datasets ({', '.join(entries)}): set data.dataset"
            )
        name = next(iter(entries))
    if name not in entries:
        raise DataError(f"{info}: no dataset {name!r}; it registers {', '.join(entries)}")
    entry = _object(entries[name], name, info)
    if "file_name" not in entry:
        raise DataError(
            f"{info}: dataset {name!r} has no file_name (hub and script datasets are not read here)"
        )
    if not isinstance(entry["file_name"], str) or not entry["file_name"]:
        raise DataError(f"{info}: {name}.file_name must be a file name, not {kind_of(entry['file_name'])}")
    formatting = entry.get("formatting", "alpaca")
    columns = _strings(entry.get("columns", {}), f"{name}.columns", info)
    tags = _strings(entry.get("tags", {}), f"{name}.tags", info)
    if formatting == "alpaca":
        layout = Layout(
            formatting="alpaca",
            prompt=columns.get("prompt", "instruction"),
            query=columns.get("query", "input"),
            response=columns.get("response", "output"),
            history=columns.get("history", "history"),
        )
    elif formatting == "sharegpt":
        layout = Layout(messages=columns.get("messages", "conversations"))
        layout.role_tag = tags.get("role_tag", "from")
        layout.content_tag = tags.get("content_tag", "value")
        layout.roles = {
            tags.get("user_tag", "human"): "user",
            tags.get("assistant_tag", "gpt"): "assistant",
            tags.get("system_tag", "system"): "system",
        }
    else:
        raise DataError(f"{info}: {name}.formatting is {formatting!r:.40}; pigg reads alpaca and sharegpt")
    layout.images = columns.get("images", "images")
    layout.system = columns.get("system", "system")
    return info.parent / entry["file_name"], layout


def read_llamafactory(path: Path, dataset: str | None = None) -> ReadResult:
    """A dataset_info.json (or the folder holding one) and its registered file, or a data file itself.
    Images are relative to the dataset folder, as LLaMA-Factory's default media_dir."""
    info = path / DATASET_INFO if path.is_dir() else path
    if info.name == DATASET_INFO:
        data_file, layout = _registered(info, dataset)
        try:
            found = data_file.is_file()
        except OSError as exc:  # a name longer than the file system allows, ...
            raise DataError(f"{info}: registered file {str(data_file)[:200]!r}: {exc.strerror}") from None
        if not found:
            raise DataError(f"{info}: registered file {data_file} does not exist")
        return read_rows(data_file, layout, media_dir=info.parent)
    return read_rows(path)
