"""The formats users already have (issue 16): LLaMA-Factory, ms-swift, Hugging Face datasets on disk,
ScreenSpot / ScreenSpot-Pro annotations; each read into the one Sample type, with file+row errors, and
rendered exactly as pigg's own format renders the same samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import caught, within
from pigg.data.readers import read_samples
from pigg.data.readers.chats import read_llamafactory
from pigg.data.readers.detect import detect_format
from pigg.data.readers.hf import read_hf
from pigg.data.readers.screenspot import read_screenspot
from pigg.data.sample import image_size
from pigg.errors import DataError


def _pigg_samples(synth_data, renderer, user=1, count=4):
    """Samples of pigg's own pickles, and the same conversations as plain text turns (answers written)."""
    samples = read_samples(synth_data, [user]).samples[:count]
    turns = []
    for sample in samples:
        conversation = []
        for message in renderer.messages(sample):
            text = "".join("<image>" if i["type"] == "image" else i["text"] for i in message["content"])
            conversation.append((message["role"], text))
        turns.append(conversation)
    return samples, turns


@pytest.fixture
def renderer(tiny_config):
    from pigg.train.build import load_renderer

    return load_renderer(tiny_config("data.image_cache=null"))[2]


def _same_rendering(renderer, ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        x, y = renderer.encode(a), renderer.encode(b)
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["pixel_values"], y["pixel_values"])


def test_llamafactory_sharegpt_registered_in_dataset_info_renders_as_pigg_pickles(
    synth_data, renderer, tmp_path
):
    samples, turns = _pigg_samples(synth_data, renderer)
    rows = [
        {
            "conversations": [
                {"from": {"user": "human", "assistant": "gpt"}[r], "value": t} for r, t in conv
            ],
            "images": [str(synth_data / s.image_refs()[0])],
        }
        for s, conv in zip(samples, turns, strict=True)
    ]
    (tmp_path / "gui.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "gui": {
                    "file_name": "gui.json",
                    "formatting": "sharegpt",
                    "columns": {"messages": "conversations", "images": "images"},
                }
            }
        )
    )
    assert detect_format(tmp_path) == detect_format(tmp_path / "dataset_info.json") == "llamafactory"
    result = read_samples(tmp_path, None)
    assert not result.problems and result.samples[1].source == f"{tmp_path / 'gui.json'}#1"
    _same_rendering(renderer, samples, result.samples)


def test_openai_style_messages_with_custom_tags_and_relative_images(synth_data, renderer, tmp_path):
    samples, turns = _pigg_samples(synth_data, renderer, user=2, count=2)
    (tmp_path / "shots").symlink_to(synth_data / "images")
    rows = [
        {
            "chat": [{"speaker": {"user": "me", "assistant": "bot"}[r], "text": t} for r, t in conv],
            "pics": [s.image_refs()[0].removeprefix("images/")],
        }
        for s, conv in zip(samples, turns, strict=True)
    ]
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (data / "dataset_info.json").write_text(
        json.dumps(
            {
                "other": {"file_name": "missing.json"},
                "mine": {
                    "file_name": "rows.jsonl",
                    "formatting": "sharegpt",
                    "columns": {"messages": "chat", "images": "pics"},
                    "tags": {
                        "role_tag": "speaker",
                        "content_tag": "text",
                        "user_tag": "me",
                        "assistant_tag": "bot",
                    },
                },
            }
        )
    )
    (data / "shots").symlink_to(synth_data / "images")  # images are relative to the dataset folder
    with pytest.raises(DataError, match="registers 2 datasets"):
        read_llamafactory(data)
    result = read_samples(data, None, dataset="mine")
    assert not result.problems
    _same_rendering(renderer, samples, [_with_base(s, data / "shots") for s in result.samples])


def _with_base(sample, folder):
    for message in sample.messages:
        for item in message["content"]:
            if item["type"] == "image":
                item["image"] = str(folder / item["image"])
    return sample


def test_swift_rows_messages_and_query_response(synth_data, renderer, tmp_path):
    samples, turns = _pigg_samples(synth_data, renderer, count=2)
    image = str(synth_data / samples[0].image_refs()[0])
    user, answer = turns[0][0][1], turns[0][1][1]
    rows = [
        {
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "images": [image],
        },
        {
            "query": user,
            "response": answer,
            "images": [image],
            "system": "You click.",
            "history": [["hi", "hello"]],
        },
    ]
    path = tmp_path / "swift.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert detect_format(path) == "llamafactory"  # ms-swift's rows are read by the same reader
    first, second = read_samples(path, None, fmt="swift").samples
    _same_rendering(renderer, samples[:1], [first])
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert second.messages[3]["content"][0] == {"type": "image", "image": image}


def test_alpaca_formatting_joins_instruction_and_input(tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps([{"instruction": "Describe", "input": "<image>", "output": "a cat", "images": ["x.png"]}])
    )
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"a": {"file_name": "a.json", "columns": {"images": "images"}}})
    )
    sample = read_llamafactory(tmp_path).samples[0]
    assert sample.messages[0]["content"] == [
        {"type": "text", "text": "Describe\n"},
        {"type": "image", "image": "x.png"},
    ]
    assert sample.answer() == "a cat" and sample.base_dir == tmp_path


def test_placeholder_mismatch_unknown_role_and_missing_images_are_problems_with_row(
    synth_data, renderer, tmp_path
):
    from pigg.data.validate import validate

    image = str(synth_data / read_samples(synth_data, [1]).samples[0].image_refs()[0])
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<image><image>click"},
                {"role": "assistant", "content": "(1, 2)"},
            ],
            "images": [image],
        },
        {
            "messages": [{"role": "user", "content": "click"}, {"role": "assistant", "content": "(1, 2)"}],
            "images": [image],
        },
        {
            "conversations": [
                {"from": "human", "value": "<image>x"},
                {"from": "function_call", "value": "{}"},
            ],
            "images": [image],
        },
        {
            "messages": [
                {"role": "user", "content": "<image>click"},
                {"role": "assistant", "content": "(1, 2)"},
            ],
            "images": ["nowhere.png"],
        },
        "not an object",
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    result = read_samples(path, None)
    causes = {p.source: p.cause for p in result.problems}
    assert "2+ <image> placeholders but 1 image(s)" in causes[f"{path}#0"]
    assert "0 <image> placeholder(s) but 1 image(s)" in causes[f"{path}#1"]
    assert "role 'function_call'" in causes[f"{path}#2"]
    assert "must be an object" in causes[f"{path}#4"]
    assert len(result.samples) == 1  # row 3 reads; its image is missing, which validation names
    report = validate(result.samples, renderer, 4096)
    assert report.problems[0].source == f"{path}#3" and "does not exist" in report.problems[0].cause
    with pytest.raises(DataError, match="no user ids"):
        read_samples(path, [1])


def test_hf_dataset_saved_to_disk_and_parquet(synth_data, tmp_path):
    import datasets
    from PIL import Image

    picture = Image.open(synth_data / read_samples(synth_data, [1]).samples[0].image_refs()[0])
    table = datasets.Dataset.from_dict(
        {
            "image": [picture, picture],
            "question": ["Describe it.", "What is red?"],
            "answer": ["A screen.", "The button."],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
            }
        ),
    )
    table.save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "described.parquet"))
    for path in (tmp_path / "saved", tmp_path / "described.parquet"):
        assert detect_format(path) == "hf"
        result = read_hf(path)
        assert not result.problems and len(result.samples) == 2
        first = result.samples[1]
        assert first.messages[0]["content"][1] == {"type": "text", "text": "What is red?"}
        assert first.answer() == "The button." and first.source.endswith("#1")
        # kept as stored (PNG bytes), decoded by validation with the row's name
        assert image_size(first.messages[0]["content"][0]["image"], first.base_dir) == picture.size
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(str(tmp_path / "textonly"))
    with pytest.raises(DataError, match="image column"):
        read_hf(tmp_path / "textonly")


# ---------------------------------------------------------------- ScreenSpot


def _screens(folder, sizes):
    from PIL import Image

    folder.mkdir(parents=True)
    for name, size in sizes.items():
        Image.new("RGB", size, "white").save(folder / name)


def test_screenspot_v1_boxes_are_xywh_and_categories_come_from_file_and_rows(tmp_path):
    _screens(tmp_path / "screenspot_imgs", {"mobile_1.png": (400, 800)})
    rows = [
        {
            "img_filename": "mobile_1.png",
            "bbox": [10, 20, 100, 50],
            "instruction": "open settings",
            "data_type": "icon",
            "data_source": "ios",
        },
        {
            "img_filename": "mobile_1.png",
            "bbox": [0, 0, 10, 10],
            "instruction": "tap OK",
            "data_type": "text",
            "data_source": "android",
        },
        {"img_filename": "mobile_1.png", "instruction": "no box"},
    ]
    path = tmp_path / "screenspot_mobile_v2.json"
    path.write_text(json.dumps(rows))
    assert detect_format(path) == "screenspot"
    result = read_screenspot(path)
    assert [p.source for p in result.problems] == [f"{path}#2"] and "no bbox" in result.problems[0].cause
    first = result.samples[0]
    assert first.target.box == (10, 20, 110, 70) and first.target.point == (60, 45)
    assert first.meta["categories"] == {"ui_type": "icon", "platform": "mobile", "source": "ios"}
    assert first.base_dir == tmp_path / "screenspot_imgs"


def test_screenspot_pro_boxes_and_the_eval_breakdown_by_its_categories(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from pigg.cli import app

    _screens(tmp_path / "images", {"vsc.png": (640, 400), "ps.png": (640, 400)})
    (tmp_path / "annotations").mkdir()
    rows = [
        {"img_filename": "vsc.png", "bbox": [100, 100, 300, 200], "img_size": [640, 400], "instruction": "run the tests",
         "ui_type": "icon", "platform": "windows", "application": "vscode", "group": "Dev"},
        {"img_filename": "ps.png", "bbox": [0, 0, 640, 400], "img_size": [640, 400], "instruction": "click the canvas",
         "ui_type": "text", "platform": "macos", "application": "photoshop", "group": "Creative"},
    ]  # fmt: skip
    path = tmp_path / "annotations" / "mixed.json"
    path.write_text(json.dumps(rows))
    samples = read_screenspot(path).samples
    assert samples[0].target.box == (100, 100, 300, 200) and samples[0].base_dir == tmp_path / "images"

    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        ["eval", "--model", str(tiny_model), "--data", str(path), "--out", str(out), "--max-new-tokens", "4"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    figures = next(iter(report["models"].values()))
    assert figures["overall"]["samples"] == 2
    categories = figures["per_category"]
    assert set(categories) == {"ui_type", "platform", "application", "group"}
    assert set(categories["group"]) == {"Dev", "Creative"} and categories["ui_type"]["icon"]["samples"] == 1
    assert "| application | samples |" in (out / "eval.md").read_text()


# ---------------------------------------------------------------- free-text answers


def test_exact_match_and_token_f1_by_hand():
    from pigg.tasks.describe import exact_match, token_f1

    assert exact_match("The red button.", "red  button") == 1.0 and exact_match("red", "blue") == 0.0
    # prediction "white circle red" vs reference "white circle blue background": 2 common tokens
    assert token_f1("A white circle, red", "white circle on blue background") == pytest.approx(
        2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5)
    )
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


# cosine distance: noise 6.0e-8 for an answer against itself (benchmarks/tolerances.py), 1.3e-2 for one
# letter more
SIMILARITY_TOL = 3e-5


def test_similarity_is_zero_for_identical_answers_and_worse_for_shuffled_references(tiny_model):
    from pigg.evaluation.similarity import similarity_scores
    from pigg.models.families import get_family
    from pigg.models.loading import load_model, load_processor

    model = load_model(str(tiny_model), torch.float32).eval()
    tokenizer = load_processor(str(tiny_model), get_family("qwen3_vl")).tokenizer
    answers = [
        "A white circle on a red background.",
        "click the login button",
        "open the settings menu",
        "tap Search",
    ]
    same = similarity_scores(model, tokenizer, answers, answers)
    # the distance of an answer to itself is float noise (benchmarks/tolerances.py); one letter more is the
    # smallest difference it must still tell apart
    within("similarity.identical", max(same), SIMILARITY_TOL)
    near = similarity_scores(model, tokenizer, ["click the login button"], ["click the login buttons"])
    caught("similarity.identical", near[0], SIMILARITY_TOL)
    shuffled = similarity_scores(model, tokenizer, answers, answers[1:] + answers[:1])
    assert min(shuffled) > 1e-3 and sum(shuffled) / 4 > sum(same) / 4
    assert similarity_scores(model, tokenizer, [""], ["tap Search"]) == [1.0]  # an empty answer is far


def test_llamafactory_description_data_trains_and_similarity_improves(tiny_model, tmp_path):
    """Issue 16's path from a LLaMA-Factory dataset folder: `pigg train` on it, then `pigg eval --metric
    similarity` base vs tuned on held-out pictures, its JSON path printed last."""
    import yaml
    from typer.testing import CliRunner

    from pigg.cli import app
    from pigg.data.synth.describe import synthesize_descriptions

    data = synthesize_descriptions(tmp_path / "describe", 96, seed=0)
    held_out = synthesize_descriptions(tmp_path / "held_out", 16, seed=5)
    run = tmp_path / "run"
    config = tmp_path / "describe.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name": str(tiny_model)},
                "data": {"path": str(data), "max_length": 256, "image_cache": None},
                "train": {"method": "full", "learning_rate": 2e-3, "batch_size": 8, "max_steps": 40, "warmup_steps": 5,
                          "output_dir": str(run), "report_to": [], "num_workers": 0, "log_dir": str(tmp_path / "logs")},
                "vision": {"method": "full"},
                "aligner": "full",
            }
        )
    )  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["eval", "--compare", f"base,{run}", "--data", str(held_out), "--metric", "similarity"]
    )
    assert result.exit_code == 0, result.output
    path = result.stdout.strip().splitlines()[-1]
    report = json.loads(Path(path).read_text())["models"]
    assert (
        report["base"]["similarity"] > 0.3 and report["run"]["similarity"] < report["base"]["similarity"] / 3
    )
    assert report["run"]["token_f1"] > report["base"]["token_f1"] + 0.4
    rows = (run / "eval" / report["run"]["answers"]).read_text().splitlines()
    assert len(rows) == 16 and set(json.loads(rows[0])) >= {
        "answer",
        "reference",
        "similarity",
        "exact_match",
        "token_f1",
    }
