"""Hugging Face datasets on disk (seed 003): a `save_to_disk` folder, parquet or arrow files, read through
the `datasets` library: an image column and prompt/answer columns (question/answer, query/response, ...),
or `messages` and `images` columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pigg.data.readers.chats import row_to_sample
from pigg.data.readers.rows import ReadResult, normalise_messages
from pigg.data.sample import Problem, Sample
from pigg.errors import DataError

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
