"""The command line: thin wrappers, clear errors, and `data show` working without any weights."""

import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from conftest import asset
from pigg.cli import app
from pigg.data.render import IGNORE_INDEX
from pigg.errors import ConfigError

runner = CliRunner()


def _write_config(path, model, data, **train):
    path.write_text(
        yaml.safe_dump({"model": {"name": str(model)}, "data": {"path": str(data)}, "train": train})
    )
    return path


@pytest.fixture
def processor_only(tmp_path):
    """A folder with the real Qwen3-VL tokenizer, processor config and chat template, and no weights."""
    src = asset("qwen3-vl-8b-instruct")
    folder = tmp_path / "qwen3-vl-processor-only"
    folder.mkdir()
    for name in (
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "chat_template.json",
    ):
        (folder / name).symlink_to(src / name)
    return folder


def test_data_show_json_on_a_processor_only_folder(processor_only, synth_data, tmp_path):
    config = _write_config(tmp_path / "c.yaml", processor_only, synth_data)
    result = runner.invoke(app, ["data", "show", str(config), "--sample", "2", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    ids, labels = shown["input_ids"], shown["labels"]
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert ids[trained[-1]] == 151645  # <|im_end|> of the real tokenizer closes the trained span
    assert ids[trained[0] - 3 : trained[0]] == [151644, 77091, 198]  # <|im_start|>assistant\n
    assert shown["trained_tokens"] == len(trained) == trained[-1] - trained[0] + 1


def test_data_show_marks_the_trained_span(tiny_model, synth_data, tmp_path):
    config = _write_config(tmp_path / "c.yaml", tiny_model, synth_data)
    result = runner.invoke(app, ["data", "show", str(config), "data.train_users=2"])
    assert result.exit_code == 0, result.output
    assert "user_2.pkl#0" in result.output
    assert "<|image_pad|>×" in result.output
    assert "<|im_start|>assistant\n[[(" in result.output and ")<|im_end|>]]" in result.output


def test_config_error_reaches_the_user_without_a_traceback(tmp_path):
    config = _write_config(tmp_path / "c.yaml", "m", "d", learnin_rate=1)
    result = runner.invoke(app, ["data", "validate", str(config)])
    assert isinstance(result.exception, ConfigError)
    proc = subprocess.run(
        [sys.executable, "-m", "pigg.cli", "train", str(config)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "did you mean 'train.learning_rate'" in proc.stderr and "Traceback" not in proc.stderr


def test_synth_and_tiny_commands(tmp_path):
    assert (
        runner.invoke(
            app, ["data", "synth", str(tmp_path / "d"), "--users", "2", "--per-user", "2"]
        ).exit_code
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "d").glob("user_*.pkl")) == ["user_1.pkl", "user_2.pkl"]
    assert runner.invoke(app, ["model", "tiny", "qwen3-vl", str(tmp_path / "m")]).exit_code == 0
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_grounding_commands_explain_what_is_missing(tiny_model, synth_data, tmp_path):
    result = runner.invoke(app, ["eval"])
    assert "needs --model or --compare" in str(result.exception)
    result = runner.invoke(app, ["eval", "--compare", "base"])
    assert "name at least one" in str(result.exception)
    # A plain model folder is not a run: the data must be named.
    result = runner.invoke(app, ["eval", "--model", str(tiny_model)])
    assert "say which data to evaluate on with --data" in str(result.exception)
    result = runner.invoke(
        app, ["eval", "--model", str(tmp_path / "nowhere" / "model"), "--data", str(synth_data)]
    )
    assert "does not exist" in str(result.exception)
    result = runner.invoke(app, ["personalize", str(tiny_model)])
    assert "is not a pigg run folder" in str(result.exception)
    result = runner.invoke(app, ["predict", "--model", str(tiny_model)])
    assert "needs --model, --image and --prompt" in str(result.exception)


def test_a_pack_length_below_max_length_is_refused(tmp_path):
    config = _write_config(tmp_path / "c.yaml", "m", "d", method="lora")
    result = runner.invoke(
        app, ["data", "validate", str(config), "data.packing=true", "data.pack_length=100"]
    )
    assert isinstance(result.exception, ConfigError)
    assert "data.pack_length=100 is below data.max_length" in str(result.exception)


def test_eval_of_a_model_folder_on_named_users(tiny_model, synth_data, tmp_path):
    out = tmp_path / "report"
    args = ["eval", "--model", str(tiny_model), "--data", str(synth_data), "--users", "2", "--out", str(out)]
    result = runner.invoke(app, [*args, "--max-samples", "3", "--batch-size", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    overall = report["models"]["tiny-qwen3-vl"]["overall"]
    assert overall["samples"] == 3 and report["settings"]["users"] == "2"
    assert result.output.strip().splitlines()[-1] == str(out / "eval.json")
