"""pigg's own formats: per-user pickle files (seed 000's format) and JSONL, both selecting users by id.

Pickles go through a restricted unpickler: only the globals that plain sample data needs (builtin
containers, PIL images, numpy arrays) may be named; anything else (os.system, subprocess, eval...) is
refused before it can run.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pigg.data.readers.rows import PLACEHOLDER, ReadResult, json_rows, normalise_messages
from pigg.data.sample import Problem, Sample, Target
from pigg.errors import DataError, UnsafePickleError, reading

USER_FILE = re.compile(r"user_(\d+)\.pkl")

_SAFE_GLOBALS = {
    ("builtins", name)
    for name in ("list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float")
    + ("complex", "bool", "object")
} | {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how bytes are pickled at protocol 2
    ("copyreg", "_reconstructor"),  # protocols 0/1; the class it rebuilds is checked here too
    ("PIL.Image", "Image"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
}


def _is_safe(module: str, name: str) -> bool:
    if (module, name) in _SAFE_GLOBALS:
        return True
    # Images straight from Image.open pickle as their plugin class, e.g. PIL.PngImagePlugin.PngImageFile.
    if re.fullmatch(r"PIL\.\w+ImagePlugin", module) and name.endswith("ImageFile"):
        return True
    # numpy >= 2 pickles dtypes as classes of numpy.dtypes (Float64DType, ...).
    return module == "numpy.dtypes" and name.endswith("DType")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source

    def find_class(self, module: str, name: str):
        if not _is_safe(module, name):
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle: it names the global '{module}.{name}', which is not "
                "plain sample data (allowed: builtin containers, PIL images, numpy arrays). Nothing in the "
                "file was executed. Re-save the data with plain lists/dicts, image paths or bytes."
            )
        return super().find_class(module, name)


def _check_opcodes(data: bytes) -> None:
    """Walk the pickle's opcodes without building anything; ValueError at a length that runs past the end
    or a memo index no earlier opcode made. A damaged byte makes exactly these, and the unpickler would
    allocate them before noticing: one flipped length byte in a 230 KB file cost 12 GB and 36 s."""
    memo = 0
    for opcode, arg, position in pickletools.genops(data):  # checks every length against the data
        if opcode.name == "MEMOIZE":
            memo += 1
        elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if int(arg) > memo:
                raise ValueError(f"memo index {arg} at byte {position}, but only {memo} object(s) stored")
            memo = max(memo, int(arg) + 1)
        elif opcode.name == "FRAME" and arg > len(data) - position:
            raise ValueError(f"a frame of {arg} bytes at byte {position} runs past the end")


def safe_load_pickle(path: Path) -> Any:
    """Unpickle `path` allowing only sample-data globals, after a walk of its opcodes that refuses
    damaged lengths before anything is allocated for them."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    try:
        _check_opcodes(data)
        return _RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable pickle: {type(exc).__name__}: {exc}") from None


OTHER_FORMAT = "this row looks like LLaMA-Factory's or ms-swift's: set data.format=llamafactory (or swift)"


def _record_to_sample(record: Any, source: str, base_dir: Path, user_id: int | None) -> Sample:
    target = None
    meta: dict[str, Any] = {}
    if isinstance(record, dict) and "messages" in record:
        if "images" in record:  # never train on the text and drop the images
            raise ValueError(
                f"an 'images' field, which pigg's rows do not have (images are items); {OTHER_FORMAT}"
            )
        messages = record["messages"]
        target = Target.from_dict(record.get("target"))
        user_id = record.get("user_id", user_id)
        meta = {k: v for k, v in record.items() if k not in ("messages", "target", "user_id")}
    else:
        messages = record  # seed 000: a bare message list
    messages = normalise_messages(messages)
    if any(PLACEHOLDER in item.get("text", "") for turn in messages for item in turn["content"]):
        raise ValueError(
            f"an {PLACEHOLDER} placeholder in text, where pigg's rows have image items; {OTHER_FORMAT}"
        )
    return Sample(
        messages=messages,
        user_id=_user_id(user_id),
        target=target,
        source=source,
        base_dir=base_dir,
        meta=meta,
    )


def _collect(records: Iterable[tuple[Any, str, Path, int | None]]) -> ReadResult:
    samples, problems = [], []
    for record, source, base_dir, user_id in records:
        try:
            with reading(source):
                samples.append(_record_to_sample(record, source, base_dir, user_id))
        except (ValueError, TypeError) as exc:
            problems.append(Problem(source, f"malformed sample: {exc}"))
    return ReadResult(samples, problems)


def list_user_files(folder: Path) -> dict[int, Path]:
    return {int(m.group(1)): p for p in sorted(folder.iterdir()) if (m := USER_FILE.fullmatch(p.name))}


def read_pickle_dir(folder: Path, users: list[int] | None) -> ReadResult:
    files = list_user_files(folder)
    if not files:
        raise DataError(f"{folder}: no user_<id>.pkl files found")
    if users is not None:
        missing = [u for u in users if u not in files]
        if missing:
            raise DataError(
                f"{folder}: no file for user(s) {missing}; present: {sorted(files)[:20]}"
                + ("..." if len(files) > 20 else "")
            )
        files = {u: files[u] for u in users}

    empty: list[Problem] = []

    def records():
        for user_id, path in files.items():
            with reading(path):
                data = safe_load_pickle(path)
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a list of samples, found {type(data).__name__}")
            if not data:
                empty.append(Problem(str(path), f"user {user_id}'s file holds no samples"))
            for index, record in enumerate(data):
                yield record, f"{path}#{index}", folder, user_id

    result = _collect(records())
    result.problems[:0] = empty
    return result


def _user_id(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"user_id must be an integer, not {value!r:.40}")
    return value


def read_jsonl(path: Path, users: list[int] | None) -> ReadResult:
    """One sample per line, an object with "messages" (and "user_id", "target"); every line that is not
    one is a problem at file:line, and so is a selected user with no line."""
    wanted = set(users) if users is not None else None
    rows, problems = json_rows(path)
    seen: set[int] = set()

    def records():
        for row in rows:
            if not isinstance(row.value, dict):
                problems.append(
                    Problem(row.source, f"malformed line: a JSON {type(row.value).__name__}, not an object")
                )
                continue
            try:
                user_id = _user_id(row.value.get("user_id"))
            except ValueError as exc:
                problems.append(Problem(row.source, f"malformed sample: {exc}"))
                continue
            if wanted is not None:
                if user_id is None:
                    problems.append(Problem(row.source, "no user_id, but the config selects users"))
                    continue
                if user_id not in wanted:
                    continue
                seen.add(user_id)
            yield row.value, row.source, path.parent, user_id

    result = _collect(records())
    result.problems[:0] = problems
    missing = sorted(wanted - seen) if wanted is not None else []
    if missing:
        result.problems.append(Problem(str(path), f"no sample for selected user(s) {missing}"))
    return result
