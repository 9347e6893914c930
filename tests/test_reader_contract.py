"""Every reader under the validation contract (docs/data.md): the peers' formats, tables and ScreenSpot
refuse damage with file and row, never train without their images, and never fail with "unexpected".

One regression test per class of damage found by trying damaged copies of valid files (issue 28); the
property-based fuzzing of the same readers is in test_fuzz_data.py.
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from pigg.config import ClassifySection
from pigg.data.readers import read_samples
from pigg.data.readers.chats import read_llamafactory
from pigg.data.readers.detect import detect_format
from pigg.data.readers.hf import read_hf
from pigg.data.readers.screenspot import read_screenspot
from pigg.data.readers.tables import read_classification
from pigg.data.validate import validate
from pigg.errors import DataError

NEWS = ClassifySection(labels=["World", "Sports", "Business", "Sci/Tech"], text_column="text")


def _screen(folder, name="screen.png", size=(320, 240)) -> str:
    Image.new("RGB", size, (200, 210, 220)).save(folder / name)
    return name


def _swift(image: str | None, text: str = "click ok") -> dict:
    if image is None:
        return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "(1, 2)"}]}
    return {
        "messages": [
            {"role": "user", "content": f"<image>{text}"},
            {"role": "assistant", "content": "(1, 2)"},
        ],
        "images": [image],
    }


def _pigg_row(image: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "ok"}]},
            {"role": "assistant", "content": "(1, 2)"},
        ]
    }


def _jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------- format detection


def test_a_swift_file_whose_first_row_is_text_only_still_trains_with_its_images(tmp_path):
    image = _screen(tmp_path)
    path = tmp_path / "swift.jsonl"
    _jsonl(path, [_swift(None), *[_swift(image, f"click {i}") for i in range(3)]])
    assert detect_format(path) == "llamafactory"  # decided on every row, not the first
    result = read_samples(path, None)
    assert not result.problems and len(result.samples) == 4
    assert [len(s.image_refs()) for s in result.samples] == [0, 1, 1, 1]
    assert all(
        "<image>" not in item.get("text", "")
        for s in result.samples
        for t in s.messages
        for item in t["content"]
    )


def test_rows_of_two_formats_in_one_file_are_refused_with_their_lines(tmp_path):
    image = _screen(tmp_path)
    path = tmp_path / "mixed.jsonl"
    _jsonl(path, [_pigg_row(image), _swift(None), *[_swift(image) for _ in range(3)], _pigg_row(image)])
    with pytest.raises(DataError) as error:
        read_samples(path, None)
    message = str(error.value)
    assert str(path) in message and "set data.format" in message
    assert "lines 1, 6 look like pigg rows" in message and "lines 3-5 look like LLaMA-Factory" in message


def test_pigg_format_forced_on_other_rows_never_drops_their_images(tmp_path):
    image = _screen(tmp_path)
    path = tmp_path / "forced.jsonl"
    placeholder_only = {
        "messages": [{"role": "user", "content": "<image>click"}, {"role": "assistant", "content": "(1, 2)"}]
    }
    _jsonl(path, [_swift(image), placeholder_only, _pigg_row(image)])
    result = read_samples(path, None, fmt="pigg")
    causes = {p.source: p.cause for p in result.problems}
    assert "an 'images' field" in causes[f"{path}:1"] and "data.format=llamafactory" in causes[f"{path}:1"]
    assert "<image> placeholder in text" in causes[f"{path}:2"]
    assert [s.source for s in result.samples] == [f"{path}:3"]


# ---------------------------------------------------------------- tables


def test_a_header_that_repeats_or_leaves_out_a_column_name_is_refused(tmp_path):
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("text,text,label\nheadline,body,World\n")
    with pytest.raises(
        DataError, match=r"repeated.csv:1: the header names column 'text' twice \(columns 1 and 2\)"
    ):
        read_classification(repeated, NEWS)
    blank = tmp_path / "blank.csv"
    blank.write_text("text,,label\nheadline,body,World\n")
    with pytest.raises(DataError, match=r"blank.csv:1: column 2 of the header has no name"):
        read_classification(blank, NEWS)


def test_excel_csv_with_a_byte_order_mark_and_crlf_reads_like_the_plain_file(tmp_path):
    rows = [("Stocks rally on earnings", "Business"), ('A "quoted", comma', "World"), ("Final score", "2")]
    plain = tmp_path / "plain.csv"
    plain.write_text(
        "text,label\n" + "".join(f'"{t.replace(chr(34), chr(34) * 2)}",{label}\n' for t, label in rows)
    )
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbf" + plain.read_text().replace("\n", "\r\n").encode())
    want, got = read_classification(plain, NEWS), read_classification(excel, NEWS)
    assert not got.problems and len(got.samples) == 3
    assert [s.messages for s in got.samples] == [s.messages for s in want.samples]
    assert [s.meta["label"] for s in got.samples] == ["Business", "World", NEWS.labels[2 - NEWS.label_base]]
    assert [s.source for s in got.samples] == [f"{excel}:{n}" for n in (2, 3, 4)]


def test_nan_and_unknown_labels_are_problems_with_their_rows(tmp_path):
    import datasets

    path = tmp_path / "labels.parquet"
    datasets.Dataset.from_dict(
        {"text": ["a", "b", "c", "d"], "label": [0.0, float("nan"), 7.0, 1.0]}
    ).to_parquet(str(path))
    spec = NEWS.model_copy(update={"label_base": 0})
    result = read_classification(path, spec)
    causes = {p.source: p.cause for p in result.problems}
    assert set(causes) == {f"{path}#1", f"{path}#2"}  # 0.0 and 1.0: pandas' integers once a NaN is among them
    assert "missing (NaN)" in causes[f"{path}#1"] and "out of range" in causes[f"{path}#2"]
    assert [s.meta["label"] for s in result.samples] == ["World", "Sports"]


# ---------------------------------------------------------------- ScreenSpot


def _pro_row(**change) -> dict:
    row = {
        "img_filename": "pro.png",
        "bbox": [10, 20, 60, 50],
        "instruction": "open the menu",
        "img_size": [320, 240],
        "ui_type": "icon",
        "platform": "windows",
    }
    return {**row, **change}


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"img_size": [640, 480]}, "img_size 640x480 but the screenshot pro.png is 320x240"),
        ({"img_size": [320]}, "img_size must be 2 numbers"),
        ({"img_size": ["320", "240"]}, "img_size must be 2 numbers, not ['320', '240']"),
        ({"bbox": None}, "bbox must be 4 numbers, not null"),
        ({"bbox": [10, 20, 60]}, "bbox must be 4 numbers, not a list"),
        ({"bbox": ["10", "20", "60", "50"]}, "bbox must be 4 numbers, not ['10'"),
        ({"bbox": [True, 20, 60, 50]}, "bbox must be 4 numbers, not [True"),
    ],
)  # fmt: skip
def test_screenspot_boxes_and_sizes_must_be_numbers_that_fit_the_screenshot(tmp_path, change, cause):
    (tmp_path / "images").mkdir()
    _screen(tmp_path / "images", "pro.png")
    path = tmp_path / "pro.json"
    path.write_text(json.dumps([_pro_row(), _pro_row(**change)]))
    result = read_screenspot(path)
    assert len(result.samples) == 1 and [p.source for p in result.problems] == [f"{path}#1"]
    assert cause in result.problems[0].cause, result.problems[0].cause


def test_eval_on_a_damaged_screenspot_file_speaks_of_evaluating(tiny_model, tmp_path):
    from pigg.evaluation.run import run_eval

    (tmp_path / "images").mkdir()
    _screen(tmp_path / "images", "pro.png")
    path = tmp_path / "pro.json"
    path.write_text(json.dumps([_pro_row(), _pro_row(bbox=None)]))
    with pytest.raises(DataError) as error:
        run_eval([str(tiny_model)], data=str(path), out=tmp_path / "eval")
    message = str(error.value)
    assert "nothing was evaluated" in message and "data.on_error=skip to evaluate on the 1 good" in message
    assert f"{path}#1" in message and "train" not in message


# ---------------------------------------------------------------- dataset_info.json


@pytest.mark.parametrize(
    ("info", "cause"),
    [
        ([{"file_name": "rows.json"}], "the top level must be an object, not a list"),
        ({"boxes": ["rows.json"]}, "boxes must be an object, not a list"),
        ({"boxes": {"file_name": None}}, "boxes.file_name must be a file name, not null"),
        ({"boxes": {"file_name": "rows.json", "columns": ["messages"]}}, "boxes.columns must be an object"),
        ({"boxes": {"file_name": "rows.json", "tags": {"role_tag": 3}}}, "boxes.tags.role_tag must be a column or tag name"),
        ({"boxes": {"file_name": "rows.json", "formatting": ["sharegpt"]}}, "boxes.formatting is ['sharegpt']"),
        ({"boxes": {"file_name": "x" * 300}}, "File name too long"),  # found by make fuzz
    ],
)  # fmt: skip
def test_dataset_info_is_validated_as_data_with_key_paths(tmp_path, info, cause):
    (tmp_path / "rows.json").write_text("[]")
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError) as error:
        read_llamafactory(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'dataset_info.json'}: ") and cause in str(error.value)


# ---------------------------------------------------------------- Hugging Face datasets


def test_bad_image_cells_of_a_hf_dataset_are_problems_at_their_rows(tmp_path, tiny_config):
    import datasets

    from pigg.train.build import load_renderer

    good = io.BytesIO()
    Image.new("RGB", (320, 240), "red").save(good, format="PNG")
    png = good.getvalue()
    # (a path to a missing file cannot be saved: save_to_disk embeds every file's bytes)
    cells = [
        {"bytes": png, "path": None},
        {"bytes": b"not an image at all", "path": None},
        {"bytes": png[: len(png) // 2], "path": None},  # a truncated PNG
        {"bytes": png, "path": None},
    ]
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    table = datasets.Dataset.from_dict(
        {"image": cells, "question": ["what colour"] * 4, "answer": ["red"] * 4}, features=features
    )
    table.save_to_disk(str(tmp_path / "saved"))
    result = read_hf(tmp_path / "saved")
    assert not result.problems and len(result.samples) == 4  # nothing is decoded while reading...
    report = validate(result.samples, load_renderer(tiny_config())[2], 512)
    # ...and validation names each bad cell's row
    assert [p.source for p in report.problems] == [f"{tmp_path / 'saved'}#{i}" for i in (1, 2)]
    assert [s.source for s in report.samples] == [f"{tmp_path / 'saved'}#{i}" for i in (0, 3)]
