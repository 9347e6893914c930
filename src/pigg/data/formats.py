"""The data formats users already have, read into pigg's one `Sample` type.

- LLaMA-Factory (seed 001): JSON lists or JSONL in sharegpt style (`conversations` of `from`/`value`),
  openai style (`messages` of `role`/`content`) or alpaca style (`instruction`/`input`/`output`), each
  with an `images` list whose entries fill the `<image>` placeholders in order; or a `dataset_info.json`
  that registers the file, its formatting, columns and tags (`data.dataset` names the entry).
- ms-swift (seed 002): JSONL with `messages` and `images`, or `query`/`response` (and `history`,
  `system`).
- Hugging Face datasets on disk (seed 003): a `save_to_disk` folder, parquet or arrow files, read through
  the `datasets` library: an image column and prompt/answer columns (question/answer, query/response,
  ...), or `messages` and `images` columns.

Every row becomes the same normalised sample as pigg's pickles and JSONL, and the same validation follows.
What only these formats can get wrong is reported here, with file and row: a placeholder count that does
not match the images, an unknown role (tool turns), a missing column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pigg.data.sample import Problem, Sample, finite_numbers, kind_of
from pigg.data.sources import PLACEHOLDER, ReadResult, _strict_json, normalise_messages
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


def _records(path: Path) -> list[tuple[str, Any]]:
    """(source, row) of a JSON list or a JSONL file; a line that is not JSON is a ValueError row."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    if path.suffix == ".json":
        try:
            rows = _strict_json(text)
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a JSON data file holds a list of rows, not a {type(rows).__name__}")
        return [(f"{path}#{i}", row) for i, row in enumerate(rows)]
    out: list[tuple[str, Any]] = []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{line_no}", _strict_json(line)))
        except ValueError as exc:
            out.append((f"{path}:{line_no}", ValueError(f"not valid JSON ({exc})")))
    return out


def read_rows(path: Path, layout: Layout | None = None, media_dir: Path | None = None) -> ReadResult:
    """Every row of a LLaMA-Factory / ms-swift JSON or JSONL file."""
    samples, problems = [], []
    for source, row in _records(path):
        try:
            if isinstance(row, ValueError):
                raise row
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
        entries = _strict_json(info.read_bytes().decode("utf-8-sig"))
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


# ---------------------------------------------------------------- Hugging Face datasets on disk

PROMPT_COLUMNS = ("question", "query", "instruction", "prompt", "text")
ANSWER_COLUMNS = ("answer", "response", "output", "caption", "description", "answers")


def _hf_table(path: Path):
    import datasets

    datasets.disable_progress_bars()
    try:
        if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            table = datasets.load_from_disk(str(path), keep_in_memory=True)
            if isinstance(table, datasets.DatasetDict):
                split = "train" if "train" in table else next(iter(table))
                table = table[split]
            return table
        kind = "parquet" if path.suffix == ".parquet" or any(path.glob("*.parquet")) else "arrow"
        files = str(path / f"*.{kind}") if path.is_dir() else str(path)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pigg_hf_") as cache:
            return datasets.load_dataset(
                kind, data_files=files, split="train", cache_dir=cache, keep_in_memory=True
            )
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read as a Hugging Face dataset: {type(exc).__name__}: {exc}"
        ) from None


def table_rows(table, chunk: int = 1024):
    """(index, row) of a `datasets.Dataset`, where a row that cannot be turned into Python values (text
    that is not UTF-8 in a damaged parquet file) comes as its exception instead of ending the iteration."""
    for start in range(0, len(table), chunk):
        try:
            columns = table[start : start + chunk]
            names = list(columns)
            count = len(columns[names[0]]) if names else 0
            yield from ((start + i, {n: columns[n][i] for n in names}) for i in range(count))
        except (UnicodeDecodeError, ValueError, TypeError):
            for index in range(start, min(start + chunk, len(table))):
                try:
                    yield index, table[index]
                except (UnicodeDecodeError, ValueError, TypeError) as exc:
                    yield index, ValueError(f"cannot be read: {type(exc).__name__}: {exc}")


def _stored(feature):
    """`feature` with every Image inside it left undecoded ({"bytes", "path"})."""
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.List | datasets.LargeList | datasets.Sequence):
        return type(feature)(_stored(feature.feature))
    if isinstance(feature, dict):
        return {key: _stored(value) for key, value in feature.items()}
    return feature


def _image_value(value: Any) -> Any:
    """An undecoded image cell as a sample's image: its bytes (decoded, and checked, by validation with the
    row's name) or its file path."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if isinstance(value.get("path"), str) and value["path"]:
            return value["path"]
        raise ValueError("an image cell with neither bytes nor a path")
    return value


def read_hf(path: Path) -> ReadResult:
    """A dataset saved by `datasets` (save_to_disk, parquet, arrow): `messages` + `images` columns, or one
    image column (an Image feature) with prompt and answer columns. Images are not decoded here: a cell
    that holds no image is a problem at its row when validation opens it."""
    import datasets

    table = _hf_table(path)
    table = table.cast(datasets.Features({k: _stored(v) for k, v in table.features.items()}))
    names = table.column_names
    base_dir = path if path.is_dir() else path.parent
    if "messages" in names or "conversations" in names:
        result = ReadResult([], [])
        for index, row in table_rows(table):
            source = f"{path}#{index}"
            try:
                if isinstance(row, Exception):
                    raise row
                if isinstance(row.get("images"), list):
                    row["images"] = [_image_value(v) for v in row["images"]]
                result.samples.append(row_to_sample(row, source, base_dir))
            except (ValueError, TypeError) as exc:
                result.problems.append(Problem(source, f"malformed row: {exc}"))
        return result
    image_columns = [n for n, f in table.features.items() if isinstance(f, datasets.Image)]
    prompt = next((n for n in PROMPT_COLUMNS if n in names), None)
    answer = next((n for n in ANSWER_COLUMNS if n in names), None)
    if not image_columns or prompt is None or answer is None:
        raise DataError(
            f"{path}: columns {', '.join(names)}: pigg needs messages (+ images), or an image column with a "
            f"prompt ({'/'.join(PROMPT_COLUMNS)}) and an answer ({'/'.join(ANSWER_COLUMNS)})"
        )
    samples, problems = [], []
    for index, row in table_rows(table):
        source = f"{path}#{index}"
        if isinstance(row, Exception):
            problems.append(Problem(source, f"malformed row: {row}"))
            continue
        image, question, reply = row[image_columns[0]], row[prompt], row[answer]
        if isinstance(reply, list) and reply and all(isinstance(r, str) for r in reply):
            reply = reply[0]  # VQA sets list several reference answers: the first one trains
        if image is None or not isinstance(question, str) or not isinstance(reply, str):
            problems.append(
                Problem(source, f"malformed row: needs an image, a text {prompt!r} and a text {answer!r}")
            )
            continue
        try:
            messages = [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": _image_value(image)},
                        {"type": "text", "text": question},
                    ],
                },
                {"role": "assistant", "content": reply},
            ]
            samples.append(Sample(normalise_messages(messages), source=source, base_dir=base_dir))
        except ValueError as exc:
            problems.append(Problem(source, f"malformed row: {exc}"))
    return ReadResult(samples, problems)


# ---------------------------------------------------------------- public grounding benchmarks

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
    from pigg.data.sample import Target

    image_dir = _screenspot_images(path, images)
    samples, problems = [], []
    stem = path.stem.lower()
    platform = next((p for p in SCREENSPOT_PLATFORMS if p in stem), None)
    for source, row in _records(path):
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


# ---------------------------------------------------------------- which format


def _numbered_rows(path: Path) -> list[tuple[int, Any]]:
    """(row number, row) of every readable row of a JSON list or JSONL file (lines: 1-based line numbers;
    a JSON list: 0-based indices, as the readers name them); unreadable rows are the readers' to report."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except ValueError:
                    continue
        return rows
    try:
        rows = json.loads(text)
    except ValueError:
        return []
    return list(enumerate(rows)) if isinstance(rows, list) else []


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
    for number, row in _numbered_rows(path):
        style = _row_style(row)
        if style is not None:
            seen.setdefault(style, []).append(number)
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
