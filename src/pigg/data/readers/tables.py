"""Classification data as users have it (seed 004): tables of text and label, and chat rows.

- CSV, TSV and parquet are read through the `datasets` library (its csv and parquet builders), with or
  without a header row (`classify.columns` names the columns of one without, as AG News's original CSV).
- JSONL is read line by line by pigg's strict reader (a damaged line is a problem at file:line, where the
  `datasets` JSON builder fails the whole file): rows with "messages" are chat samples taken as they are,
  the others are table rows.

A table row becomes a chat sample through `classify`: the system prompt, the user prompt with the row's
text, and the answer (`{"category":"World"}` or the bare label). Every problem names its file and row: an
unknown label, an empty text, a missing column; nothing is guessed or silently dropped.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from pigg.config import ClassifySection
from pigg.data.labels import format_label, parse_label
from pigg.data.readers.hf import table_rows
from pigg.data.readers.rows import ReadResult, _unicode, json_rows, normalise_messages
from pigg.data.sample import Problem, Sample
from pigg.errors import DataError

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}


def answer_text(label: str, spec: ClassifySection) -> str:
    """What the model is trained to answer for `label`."""
    return format_label(label, spec.key) if spec.answer == "json" else label


def _label_of(value: Any, spec: ClassifySection) -> str:
    """The configured label a row's label cell names; ValueError says why it names none."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"label {value!r} is not a class name or index")
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if value != value:
            raise ValueError("the label is missing (NaN)")
        if float(value).is_integer():  # pandas stores an integer column with a missing cell as floats
            value = int(value)
    if isinstance(value, numbers.Integral) or (
        isinstance(value, str) and value.strip().lstrip("-").isdigit()
    ):
        index = int(value) - spec.label_base
        if not 0 <= index < len(spec.labels):
            first = spec.label_base
            raise ValueError(
                f"label {value!r} is out of range: {len(spec.labels)} classes are numbered "
                f"{first}-{first + len(spec.labels) - 1} (classify.label_base={spec.label_base})"
            )
        return spec.labels[index]
    if isinstance(value, numbers.Real):
        raise ValueError(f"label {value!r} is not a whole number")
    if isinstance(value, str):
        named = {label.strip().casefold(): label for label in spec.labels}.get(value.strip().casefold())
        if named is None:
            raise ValueError(f"unknown label {value!r}; the labels are {', '.join(spec.labels)}")
        return named
    raise ValueError(f"label {value!r:.40} is not a class name or index")


def _text_of(row: dict[str, Any], spec: ClassifySection) -> str:
    columns = [spec.text_column] if isinstance(spec.text_column, str) else spec.text_column
    parts = []
    for column in columns:
        if column not in row:
            raise ValueError(f"no column {column!r} (columns: {', '.join(map(str, row))})")
        value = row[column]
        if value is None:
            continue  # an empty cell of one of several columns (a title-only article); all empty is an error
        if not isinstance(value, str):
            raise ValueError(f"column {column!r} holds {type(value).__name__} {value!r:.40}, not text")
        parts.append(_unicode(value.strip(), f"column {column!r}"))
    text = " ".join(p for p in parts if p)
    if not text:
        raise ValueError(f"empty text in column(s) {', '.join(columns)}")
    return text


def row_to_sample(row: dict[str, Any], source: str, spec: ClassifySection) -> Sample:
    """One table row as a chat sample with its label in `meta["label"]`; ValueError names the problem."""
    if spec.label_column not in row:
        raise ValueError(f"no column {spec.label_column!r} (columns: {', '.join(map(str, row))})")
    label = _label_of(row[spec.label_column], spec)
    text = _text_of(row, spec)
    prompt = spec.prompt.replace("{text}", text) if "{text}" in spec.prompt else f"{spec.prompt}\n\n{text}"
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer_text(label, spec)},
    ]
    if spec.system_prompt:
        messages.insert(0, {"role": "system", "content": spec.system_prompt})
    return Sample(normalise_messages(messages), source=source, meta={"label": label})


def chat_to_sample(record: dict[str, Any], source: str, spec: ClassifySection, base_dir: Path) -> Sample:
    """A chat row ({"messages": [...]}, seed 004's train.jsonl) whose last answer names a label."""
    sample = Sample(normalise_messages(record["messages"]), source=source, base_dir=base_dir)
    label = parse_label(sample.answer(), spec.labels, spec.key)
    if label is None:
        raise ValueError(
            f"the answer {sample.answer()!r:.60} names none of the labels {', '.join(spec.labels)}"
        )
    if "label" in record and _label_of(record["label"], spec) != label:
        raise ValueError(
            f"the row's label {record['label']!r} disagrees with its answer {sample.answer()!r:.40}"
        )
    sample.meta = {"label": label}
    return sample


def _jsonl_rows(path: Path, spec: ClassifySection) -> ReadResult:
    rows, problems = json_rows(path)
    samples = []
    for row in rows:
        try:
            if not isinstance(row.value, dict):
                raise ValueError(f"a JSON {type(row.value).__name__}, not an object")
            if "messages" in row.value:
                samples.append(chat_to_sample(row.value, row.source, spec, path.parent))
            else:
                samples.append(row_to_sample(row.value, row.source, spec))
        except (ValueError, TypeError) as exc:
            problems.append(Problem(row.source, f"malformed row: {exc}"))
    return ReadResult(samples, problems)


def _load_table(path: Path, kind: str, spec: ClassifySection):
    """The file as a `datasets.Dataset` (its cache is a temporary folder: nothing lands in ~/.cache)."""
    import tempfile

    import datasets

    options: dict[str, Any] = {}
    if kind == "csv":
        sep = "\t" if path.suffix == ".tsv" else ","
        options["sep"] = sep
        if spec.columns:
            options["column_names"] = spec.columns
        # every cell stays text (a numeric-looking title must not become a float, an empty one NaN): the
        # label is read by _label_of, which knows integers from names
        names = spec.columns or _header(path, sep)
        options["features"] = datasets.Features({n: datasets.Value("string") for n in names})
        options["keep_default_na"] = False
        options["encoding"] = "utf-8-sig"  # Excel's "CSV UTF-8" starts with a byte-order mark
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="pigg_table_") as cache:
        try:
            table = datasets.load_dataset(
                kind, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True, **options
            )
        except Exception as exc:  # pandas' and pyarrow's parser errors name the line; keep their words
            cause = exc.__cause__ or exc
            raise DataError(f"{path}: cannot read as {kind}: {type(cause).__name__}: {cause}") from None
    return table


def _header(path: Path, sep: str) -> list[str]:
    """The header row's column names, each named once: a repeated or blank name would leave one of the
    columns unread (the table keeps the first of two, a blank one gets a generated name)."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            names = next(csv.reader(handle, delimiter=sep), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the header row: {exc}") from None
    for number, name in enumerate(names, start=1):
        if not name.strip():
            raise DataError(f"{path}:1: column {number} of the header has no name; name it")
        if names.index(name) + 1 != number:
            raise DataError(
                f"{path}:1: the header names column {name!r} twice (columns {names.index(name) + 1} and "
                f"{number}); rename one, or name the columns with classify.columns"
            )
    return names


def _table_rows(path: Path, kind: str, spec: ClassifySection) -> ReadResult:
    table = _load_table(path, kind, spec)
    header = 1 if kind == "csv" and not spec.columns else 0
    samples, problems = [], []
    for index, row in table_rows(table):
        # a CSV row is named by its line in the file (header included); a parquet row by its index
        source = f"{path}:{index + 1 + header}" if kind == "csv" else f"{path}#{index}"
        try:
            if isinstance(row, Exception):
                raise row
            if kind == "csv":
                row = {k: (v if v != "" else None) for k, v in row.items()}
            samples.append(row_to_sample(row, source, spec))
        except (ValueError, TypeError) as exc:
            problems.append(Problem(source, f"malformed row: {exc}"))
    return ReadResult(samples, problems)


def read_classification(path: str | Path, spec: ClassifySection) -> ReadResult:
    """The samples of a classification file (CSV, TSV, parquet or JSONL) and a problem per bad row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist" if not path.exists() else f"{path} is not a file")
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: classification data is .csv, .tsv, .parquet or .jsonl, not {path.suffix!r}")
    result = _jsonl_rows(path, spec) if kind == "jsonl" else _table_rows(path, kind, spec)
    if not result.samples and not result.problems:
        raise DataError(f"{path}: holds no rows")
    return result
