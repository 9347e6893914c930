"""Bad input never crashes pigg: property-based fuzzing of every reader, and each damage kind found so far
as a fixed regression test through the real CLI.

The property: a reader and the validation either accept a sample, and it then renders, tokenizes and
collates, or report a problem naming the file and the row; no other exception, no hang (hypothesis'
deadline). `make test` runs the default profile; `make fuzz` the long one (docs/data.md).
"""

from __future__ import annotations

import io
import json
import pickle
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pigg.data.packing import TrainingCollator
from pigg.data.readers import read_samples
from pigg.data.validate import validate
from pigg.errors import DataError, PiggError

MAX_LENGTH = 256
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|vision_start|>", "<|endoftext|>"]
KEYS = ["user_id", "messages", "target", "role", "content", "type", "text", "image", "point", "box"]

# function-scoped fixtures are fine here: they are built once per test, not per example
fuzz_settings = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory):
    """A renderer of the tiny model and a folder with one good screenshot."""
    from pigg.config import build_config
    from pigg.train.build import load_renderer

    folder = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (320, 240), (200, 210, 220)).save(folder / "screen.png")
    cfg = build_config(
        {"model": {"name": str(tiny_model)}, "data": {"path": str(folder), "max_length": MAX_LENGTH}}
        | {"train": {"output_dir": str(folder / "run")}}
    )
    return folder, load_renderer(cfg)[2]


def good_record(image="screen.png") -> dict:
    return {
        "user_id": 1,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": "click ok"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "(500, 500)"}]},
        ],
        "target": {"point": [160, 120]},
    }


def check_property(path: Path, renderer, users=None, read=None) -> tuple[int, int]:
    """Read (with `read(path)`, default: read_samples in the detected format), validate, and render what
    was accepted; (accepted, problems). Any exception but a DataError naming `path` fails the test."""
    try:
        read = read(path) if read else read_samples(path, users)
    except DataError as exc:  # the whole file is unreadable: its name must be in the message
        assert str(path) in str(exc)
        return 0, 1
    report = validate(read.samples, renderer, MAX_LENGTH)
    problems = read.problems + report.problems
    for problem in problems:
        assert problem.source.startswith(str(path)), problem
        assert problem.cause
    for sample in report.samples:
        assert sample.source.startswith(str(path)) and re.search(r"[:#]\d+$", sample.source)  # file, row
        batch = TrainingCollator(renderer)([sample])
        assert batch["input_ids"].shape[1] <= MAX_LENGTH
    return len(report.samples), len(problems)


# ---------------------------------------------------------------- strategies

text = st.one_of(
    st.text(max_size=40),  # any code points, lone surrogates included
    st.sampled_from(["", " ", "user", "assistant", "system", "image", "text", "screen.png", "(500, 500)"]),
    st.sampled_from(SPECIAL).map(lambda t: f"click {t} ok"),
    st.just("x" * 5000),
)
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_like = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=24,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@st.composite
def damaged_record(draw, good=good_record):
    """A good record with one to three places replaced by arbitrary JSON-like values or removed."""
    record = good()
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _paths(record) if p]
        if not places:  # everything removed already
            break
        path = draw(st.sampled_from(places))
        parent = record
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(json_like)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    return record


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _damage(data: bytes, draw) -> bytes:
    """Byte flips and a possible cut."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(out) - 1))
        out[position] ^= draw(st.integers(1, 255))
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


# ---------------------------------------------------------------- properties


@fuzz_settings
@given(records=st.lists(st.one_of(damaged_record(), json_like), min_size=1, max_size=4))
def test_any_json_lines_are_accepted_and_render_or_refused_with_file_and_line(world, records):
    folder, renderer = world
    path = folder / "fuzz.jsonl"
    # allow_nan writes NaN/Infinity literals; ensure_ascii escapes lone surrogates as JSON allows
    path.write_text("\n".join(json.dumps(r, allow_nan=True) for r in records) + "\n")
    check_property(path, renderer)


@fuzz_settings
@given(data=st.data())
def test_damaged_jsonl_bytes_never_escape_as_exceptions(world, data):
    folder, renderer = world
    good = "\n".join(json.dumps(good_record()) for _ in range(3)).encode() + b"\n"
    path = folder / "bytes.jsonl"
    path.write_bytes(_damage(good, data.draw))
    check_property(path, renderer)


@fuzz_settings
@given(data=st.data(), protocol=st.integers(2, 5))
def test_damaged_pickles_are_refused_with_their_file_or_read(world, data, protocol):
    folder, renderer = world
    users = folder / f"pickles{protocol}"
    users.mkdir(exist_ok=True)
    screen = Image.open(folder / "screen.png")
    screen.load()
    samples = [good_record(image=screen)["messages"], good_record(image=(folder / "screen.png").read_bytes())]
    payload = pickle.dumps(samples, protocol=protocol)
    (users / "user_1.pkl").write_bytes(_damage(payload, data.draw))
    check_property(users, renderer)


@fuzz_settings
@given(data=st.data())
def test_damaged_screenshots_are_refused_at_validation_or_render(world, data):
    folder, renderer = world
    (folder / "damaged.png").write_bytes(_damage(_png(), data.draw))
    path = folder / "png.jsonl"
    path.write_text(json.dumps(good_record(image="damaged.png")) + "\n")
    check_property(path, renderer)


# ---------------------------------------------------------------- the other tools' formats, tables, ScreenSpot
# The same property for every reader: accepted (and then rendered) or refused naming the file and the row.


def swift_row() -> dict:
    return {
        "messages": [
            {"role": "user", "content": "<image>click ok"},
            {"role": "assistant", "content": "(500, 500)"},
        ],
        "images": ["screen.png"],
    }


def sharegpt_row() -> dict:
    return {
        "conversations": [
            {"from": "human", "value": "<image>click ok"},
            {"from": "gpt", "value": "(500, 500)"},
        ],
        "images": ["screen.png"],
        "system": "You click.",
    }


def alpaca_row() -> dict:
    return {"instruction": "<image>click", "input": "ok", "output": "(500, 500)", "images": ["screen.png"]}


def screenspot_row() -> dict:
    return {"img_filename": "screen.png", "bbox": [10, 20, 60, 40], "instruction": "click ok", "img_size": [320, 240],
            "ui_type": "icon", "platform": "web"}  # fmt: skip


def table_row() -> dict:
    return {"text": "Stocks rally", "label": "Business"}


NEWS = {"labels": ["World", "Sports", "Business", "Sci/Tech"], "text_column": "text"}


def _classification(path: Path):
    from pigg.config import ClassifySection
    from pigg.data.readers.tables import read_classification

    return read_classification(path, ClassifySection(**NEWS))


ROWS = {"swift": swift_row, "sharegpt": sharegpt_row, "alpaca": alpaca_row, "screenspot": screenspot_row}


@fuzz_settings
@given(data=st.data(), kind=st.sampled_from(sorted(ROWS)), suffix=st.sampled_from([".json", ".jsonl"]))
def test_other_tools_rows_and_screenspot_mutated_are_read_or_refused_with_file_and_row(
    world, data, kind, suffix
):
    folder, renderer = world
    rows = data.draw(
        st.lists(
            st.one_of(damaged_record(ROWS[kind]), st.builds(ROWS[kind]), json_like), min_size=1, max_size=4
        )
    )
    path = folder / f"{kind}{suffix}"
    text = [json.dumps(r, allow_nan=True) for r in rows]
    path.write_text("[" + ",".join(text) + "]" if suffix == ".json" else "\n".join(text) + "\n")
    check_property(path, renderer)


@fuzz_settings
@given(data=st.data(), kind=st.sampled_from(sorted(ROWS)), suffix=st.sampled_from([".json", ".jsonl"]))
def test_other_tools_files_with_damaged_bytes_are_read_or_refused(world, data, kind, suffix):
    folder, renderer = world
    rows = [json.dumps(ROWS[kind]()) for _ in range(3)]
    good = ("[" + ",".join(rows) + "]" if suffix == ".json" else "\n".join(rows) + "\n").encode()
    path = folder / f"bytes_{kind}{suffix}"
    path.write_bytes(_damage(good, data.draw))
    check_property(path, renderer)


def info_entry() -> dict:
    return {"file_name": "registered.json", "formatting": "sharegpt", "columns": {"messages": "conversations"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}  # fmt: skip


@fuzz_settings
@given(entry=st.one_of(damaged_record(info_entry), json_like))
def test_a_mutated_dataset_info_registers_its_file_or_is_refused_naming_it(world, entry):
    folder, renderer = world
    registry = folder / "registry"
    registry.mkdir(exist_ok=True)
    (registry / "registered.json").write_text(json.dumps([sharegpt_row()]))
    Image.new("RGB", (320, 240), (200, 210, 220)).save(registry / "screen.png")
    (registry / "dataset_info.json").write_text(json.dumps({"boxes": entry}, allow_nan=True))
    check_property(registry, renderer)


@fuzz_settings
@given(data=st.data(), suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_classification_tables_damaged_are_read_or_refused_with_file_and_row(world, data, suffix):
    folder, renderer = world
    path = folder / f"table{suffix}"
    if suffix == ".jsonl":
        rows = data.draw(st.lists(st.one_of(damaged_record(table_row), json_like), min_size=1, max_size=4))
        path.write_text("\n".join(json.dumps(r, allow_nan=True) for r in rows) + "\n")
    else:
        sep = "\t" if suffix == ".tsv" else ","
        good = f"text{sep}label\r\nStocks rally{sep}Business\nFinal score{sep}2\n".encode()
        bom = data.draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
        path.write_bytes(bom + _damage(good, data.draw))
    check_property(path, renderer, read=_classification)


@fuzz_settings
@given(data=st.data())
def test_damaged_parquet_tables_and_hf_datasets_are_read_or_refused(world, data):
    import datasets

    folder, renderer = world
    kind = data.draw(st.sampled_from(["table", "hf"]))
    path = folder / f"{kind}.parquet"
    if kind == "table":
        labels = data.draw(
            st.lists(st.one_of(st.integers(-2, 6), st.floats(), st.text(max_size=8)), min_size=1, max_size=3)
        )
        table = datasets.Dataset.from_dict(
            {"text": ["Stocks rally"] * len(labels), "label": [str(v) for v in labels]}
        )
    else:
        cells = data.draw(st.lists(st.sampled_from(["good", "cut", "noise"]), min_size=1, max_size=3))
        png = _png()
        raw = {"good": png, "cut": png[: len(png) // 3], "noise": b"\x89PNG not really"}
        table = datasets.Dataset.from_dict(
            {"image": [{"bytes": raw[c], "path": None} for c in cells], "question": ["what"] * len(cells),
             "answer": ["red"] * len(cells)},
            features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                        "answer": datasets.Value("string")}),
        )  # fmt: skip
    table.to_parquet(str(path))
    if data.draw(st.booleans()):
        path.write_bytes(_damage(path.read_bytes(), data.draw))
    check_property(path, renderer, read=_classification if kind == "table" else None)


# ---------------------------------------------------------------- each damage kind, through the CLI


def _row(**change) -> dict:
    record = good_record()
    record.update(change)
    return record


def _edit(edit) -> dict:
    record = good_record()
    edit(record)
    return record


KINDS = {
    "an item that is neither image nor text": _edit(lambda r: r["messages"][0]["content"].append({"x": 1})),
    "no user turn": _edit(lambda r: r["messages"].pop(0)),
    "an extreme aspect ratio": _edit(lambda r: r["messages"][0]["content"][0].update(image="thin.png")),
    "a lone surrogate": _edit(lambda r: r["messages"][0]["content"][1].update(text="click \ud800")),
    "a NaN point": _row(target={"point": [float("nan"), 3]}),
    "a reversed box": _row(target={"box": [100, 100, 10, 10]}),
    "a box of three numbers": _row(target={"box": [1, 2, 3]}),
    "a point outside the screenshot": _row(target={"point": [1000, 1000]}),
    "a target that is a list": _row(target=[1, 2]),
    "a user_id that is not an integer": _row(user_id="abc"),
    "chat markup in user text": _edit(lambda r: r["messages"][0]["content"][1].update(text="a<|im_end|>")),
}
RAW_LINES = {
    "a line that is not JSON": b"{nope",
    "a line that is not an object": b"[1, 2]",
    "a NaN literal": json.dumps(good_record()).replace("160", "NaN").encode(),
    "a line that is not UTF-8": b'{"user_id": 1, "messages": "\xff\xfe"}',
}


def _pigg(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    from pigg.cli import main

    monkeypatch.setattr(sys, "argv", ["pigg", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code, capsys.readouterr().err


@pytest.mark.parametrize("kind", [*KINDS, *RAW_LINES, "an empty file"])
def test_each_damage_kind_stops_validate_and_train_with_file_and_line(
    tiny_model, tmp_path, capsys, monkeypatch, kind
):
    Image.new("RGB", (320, 240), (200, 200, 200)).save(tmp_path / "screen.png")
    Image.new("RGB", (4000, 10), (200, 200, 200)).save(tmp_path / "thin.png")
    data = tmp_path / "data.jsonl"
    if kind in KINDS:
        good = json.dumps(good_record())
        data.write_bytes(f"{good}\n{json.dumps(KINDS[kind])}\n".encode("utf-8", "surrogatepass"))
    elif kind in RAW_LINES:
        data.write_bytes(json.dumps(good_record()).encode() + b"\n" + RAW_LINES[kind] + b"\n")
    else:
        data.write_bytes(b"")
    config = tmp_path / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"name": str(tiny_model)},
                "data": {"path": str(data), "max_length": MAX_LENGTH, "train_users": "1"},
                "train": {"output_dir": str(tmp_path / "run"), "log_dir": str(tmp_path / "logs")},
            }
        )
    )
    for command in (["data", "validate"], ["train"]):
        code, err = _pigg(capsys, monkeypatch, *command, str(config))
        assert code == 2, err
        assert "Traceback" not in err
        where = f"{data}" if kind == "an empty file" else f"{data}:2"
        assert where in err, err
    assert not (tmp_path / "run" / "pigg_run.json").exists()  # nothing trained


def test_an_empty_user_file_is_a_problem_and_an_empty_selection_an_error(tmp_path, tiny_config):
    from pigg.train.build import prepare_data

    (tmp_path / "data").mkdir()
    pickle.dump([good_record()["messages"]], (tmp_path / "data" / "user_1.pkl").open("wb"))
    pickle.dump([], (tmp_path / "data" / "user_2.pkl").open("wb"))
    Image.new("RGB", (320, 240)).save(tmp_path / "data" / "screen.png")
    with pytest.raises(DataError, match=r"user_2.pkl: user 2's file holds no samples"):
        prepare_data(tiny_config(f"data.path={tmp_path / 'data'}", "data.train_users=1-2"))
    skipped = prepare_data(
        tiny_config(f"data.path={tmp_path / 'data'}", "data.train_users=1-2", "data.on_error=skip")
    )
    assert len(skipped.train) == 1
    with pytest.raises(DataError, match=r"no training samples: data.train_users=2 selects none"):
        prepare_data(
            tiny_config(f"data.path={tmp_path / 'data'}", "data.train_users=2", "data.on_error=skip")
        )


def test_an_unexpected_exception_is_one_line_naming_the_input_and_debug_shows_the_traceback(
    tiny_model, tmp_path, capsys, monkeypatch
):
    """A bug inside a reader (simulated) must not end in a traceback, unless --debug asks for one."""
    import pigg.data.readers.own as sources

    def broken(*args, **kwargs):
        raise KeyError("simulated bug")

    monkeypatch.setattr(sources, "normalise_messages", broken)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(good_record()) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"model": {"name": str(tiny_model)}, "data": {"path": str(data)}}))
    code, err = _pigg(capsys, monkeypatch, "data", "validate", str(config))
    assert code == 1 and "Traceback" not in err
    assert "unexpected KeyError: 'simulated bug'" in err and f"while reading {data}:1" in err
    assert "report it at" in err and "--debug" in err
    monkeypatch.setattr(sys, "argv", ["pigg", "data", "validate", str(config), "--debug"])
    from pigg.cli import main

    with pytest.raises(KeyError, match="simulated bug"):
        main()
    assert not isinstance(KeyError(), PiggError)


def test_a_damaged_pickle_length_is_refused_before_the_unpickler_allocates_for_it(tmp_path, monkeypatch):
    """Found by `make fuzz`: one byte of a PIL image's 230,400-byte length changed shifts the rest of the
    file, and the unpickler then reads a memo index of 778,986,853 and grows its memo to it (the fuzzed
    file took 12 GB and 36 s; under a 3 GB limit this one ends in MemoryError). The opcodes are now walked
    first, and the file is refused for what is wrong with it."""
    import tracemalloc

    from pigg.data.readers.own import safe_load_pickle

    monkeypatch.chdir(tmp_path)  # the PNG pickles its file name: a relative one keeps the bytes fixed
    Image.new("RGB", (320, 240), (200, 210, 220)).save("screen.png")
    screen = Image.open("screen.png")
    screen.load()
    records = [good_record(image=screen)["messages"], good_record(image=Path("screen.png").read_bytes())]
    payload = bytearray(pickle.dumps(records, protocol=4))
    assert payload.find((320 * 240 * 3).to_bytes(4, "little")) == 128  # the image's length field
    payload[128] ^= 14
    path = tmp_path / "user_1.pkl"
    path.write_bytes(bytes(payload))
    tracemalloc.start()
    try:
        with pytest.raises(
            DataError, match=r"not a readable pickle: ValueError: memo index 778986853 at byte"
        ):
            safe_load_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # bytes, for a 0.23 MB file


def test_a_pickled_image_with_a_damaged_state_is_a_problem_not_a_crash_in_the_processor(world, tmp_path):
    """Found by `make fuzz`: PIL's __setstate__ restores what the file says, so a damaged pickle gave an
    image whose `info` was a list; validation passed it and the processor crashed on `info.get`."""
    _, renderer = world
    image = Image.new("RGB", (320, 240))
    state = image.__getstate__()
    damaged = Image.Image.__new__(Image.Image)
    damaged.__setstate__([[], *state[1:]])  # info: a list
    (tmp_path / "user_1.pkl").write_bytes(pickle.dumps([good_record(image=damaged)["messages"]]))
    read = read_samples(tmp_path, None)
    report = validate(read.samples, renderer, MAX_LENGTH)
    assert not report.samples
    assert [str(p) for p in report.problems] == [
        f"{tmp_path / 'user_1.pkl'}#0: image 1: the pickled image is damaged: its info is a list, not a dict"
    ]
