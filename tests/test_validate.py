"""Every bad-input case stops the run before training with file, index and cause; `skip` records them."""

import json
import pickle

import pytest
from PIL import Image

from pigg.config import build_config
from pigg.data.readers import read_samples
from pigg.data.render import Renderer
from pigg.data.validate import layout_of, validate
from pigg.errors import DataError
from pigg.models.coords import image_token_count
from pigg.models.families import QWEN3_VL
from pigg.models.loading import load_processor
from pigg.train.build import prepare_data

LONG = " ".join(["please click the big blue button"] * 16)


def _turns(user_content, answer):
    return [
        {"role": "user", "content": user_content},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


@pytest.fixture
def bad_data(tmp_path):
    Image.new("RGB", (320, 240), "white").save(tmp_path / "ok.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    full = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    img = {"type": "image", "image": "ok.png"}
    click = {"type": "text", "text": "click login"}
    rows = [
        _turns([img, click], "(1, 2)"),  # 0 fine
        _turns([{"type": "image", "image": "missing.png"}, click], "(1, 2)"),  # 1
        _turns([{"type": "image", "image": "garbage.png"}, click], "(1, 2)"),  # 2
        _turns([{"type": "image", "image": "truncated.png"}, click], "(1, 2)"),  # 3
        [{"role": "user", "content": [img, click]}],  # 4 no assistant turn
        _turns([img, click], "   "),  # 5 empty answer
        _turns([img, click], LONG),  # 6 answer cut off at max_length
        _turns([{"type": "text", "text": LONG}, img, click], "(1, 2)"),  # 7 cut lands inside the image tokens
        "garbage row",  # 8 malformed
        _turns([img, click], "(3, 4)"),  # 9 fine
    ]
    (tmp_path / "user_5.pkl").write_bytes(pickle.dumps(rows))
    return tmp_path


def _cfg(tiny_model, data, run_dir, *overrides):
    raw = {
        "model": {"name": str(tiny_model)},
        "data": {"path": str(data), "max_length": 120},
        "train": {"output_dir": str(run_dir)},
    }
    return build_config(raw, list(overrides))


EXPECTED = {
    1: "missing.png does not exist",
    2: "image cannot be read",
    3: "image cannot be read",
    4: "no assistant turn",
    5: "empty answer in assistant turn 1",
    6: "the answer (tokens",
    7: "truncation would cut through image 1's tokens",
    8: "malformed sample",
}


def test_every_problem_is_reported_at_once_and_nothing_trains(tiny_model, bad_data, tmp_path):
    with pytest.raises(DataError) as err:
        prepare_data(_cfg(tiny_model, bad_data, tmp_path / "run"))
    text = str(err.value)
    assert "8 problem(s) in 10 samples; nothing was trained" in text
    lines = [line for line in text.splitlines() if line.startswith("  - ")]
    for index, cause in EXPECTED.items():
        matching = [line for line in lines if f"user_5.pkl#{index}:" in line]
        assert len(matching) == 1 and cause in matching[0], (index, matching)
    assert not any("#0:" in line or "#9:" in line for line in lines)


def test_skip_keeps_good_samples_and_writes_the_list(tiny_model, bad_data, tmp_path):
    run_dir = tmp_path / "run"
    data = prepare_data(_cfg(tiny_model, bad_data, run_dir, "data.on_error=skip"))
    assert [s.source.rsplit("#", 1)[1] for s in data.train] == ["0", "9"]
    skipped = [json.loads(line) for line in (run_dir / "skipped_samples.jsonl").read_text().splitlines()]
    assert sorted(int(s["source"].rsplit("#", 1)[1]) for s in skipped) == sorted(EXPECTED)


def test_validated_length_is_the_real_encoded_length(tiny_model, synth_data):
    processor = load_processor(str(tiny_model), QWEN3_VL)
    renderer = Renderer(processor, QWEN3_VL)
    samples = read_samples(synth_data, users=[1]).samples
    report = validate(samples, renderer, max_length=4096)
    assert report.ok and len(report.samples) == len(samples)
    for sample in samples:
        text = processor.apply_chat_template(sample.messages, tokenize=False)
        ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        real = renderer.encode(sample)
        grid = real["image_grid_thw"][0]
        width, height = Image.open(synth_data / sample.image_refs()[0]).size
        assert image_token_count(processor.image_processor, width, height) == int(grid.prod()) // 4
        layout = layout_of(ids, [int(grid.prod()) // 4], renderer)
        assert layout.length == len(real["input_ids"])
