"""The recipes shipped inside the package (found by name, listed, copied), and `pigg --version` / `pigg env`."""

import json
import subprocess

import pytest
from typer.testing import CliRunner

import pigg
from conftest import REPO
from pigg.cli import app
from pigg.config import load_config
from pigg.environment import describe
from pigg.errors import ConfigError
from pigg.recipes import RECIPES, copy, deepspeed_config, find, recipe_paths, resolve_config

runner = CliRunner()


def test_a_recipe_is_found_by_name_or_file(tmp_path, monkeypatch):
    shipped = RECIPES / "seed003" / "qlora.yaml"
    assert resolve_config("seed003/qlora") == resolve_config("seed003/qlora.yaml") == shipped
    assert load_config("global_lora") == load_config(RECIPES / "global_lora.yaml")
    # a file of that name where the command runs is the user's, and wins over the shipped recipe
    monkeypatch.chdir(tmp_path)
    (tmp_path / "global_lora").write_text("model: {name: mine}\ndata: {path: d}\n")
    assert load_config("global_lora").model.name == "mine"
    with pytest.raises(ConfigError, match=r"no recipe is named global_lorra \(did you mean global_lora\?\)"):
        load_config("global_lorra")
    # launch configs are not training recipes
    assert find("accelerate/fsdp") is not None
    with pytest.raises(ConfigError, match="no recipe is named accelerate/fsdp"):
        resolve_config("accelerate/fsdp")


def test_deepspeed_setting_names_a_shipped_config_or_a_file(tmp_path):
    zero2 = RECIPES / "deepspeed" / "zero2.json"
    assert (
        deepspeed_config("zero2")
        == deepspeed_config("zero2.json")
        == deepspeed_config("deepspeed/zero2")
        == zero2
    )
    mine = tmp_path / "zero2.json"
    mine.write_text("{}")
    assert deepspeed_config(str(mine)) == mine
    with pytest.raises(ConfigError, match=r"zero4 does not exist \(pigg ships zero2, zero3"):
        deepspeed_config("zero4")


def test_recipes_lists_each_with_model_and_method():
    result = runner.invoke(app, ["recipes", "--json"])
    assert result.exit_code == 0, result.output
    listed = {r["name"]: r for r in json.loads(result.output)["recipes"]}
    assert sorted(listed) == sorted(p.relative_to(RECIPES).with_suffix("").as_posix() for p in recipe_paths())
    assert all(r["about"] and r["model"] for r in listed.values())
    assert listed["global_lora"]["method"] == "lora r8/a32"
    assert listed["global_full"]["method"] == "full, model parallel"
    assert listed["seed003/qlora"]["method"] == "qlora (nf4) r8/a8"
    assert (
        listed["seed002_last6_lora"]["method"]
        == "lora r16/a32, LLM layers last:2, vision lora (last:6), DeepSpeed zero2"
    )
    assert listed["seed004_agnews_full"]["model"] == "Qwen/Qwen2.5-7B-Instruct"
    text = runner.invoke(app, ["recipes"]).output
    assert "seed003/full_fsdp" in text and "accelerate/deepspeed_zero3.yaml" in text


def test_copy_writes_an_editable_copy_and_never_overwrites(tmp_path):
    assert copy("seed003/lora", tmp_path) == [tmp_path / "lora.yaml"]
    assert (tmp_path / "lora.yaml").read_text() == (RECIPES / "seed003" / "lora.yaml").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        copy("seed003/lora", tmp_path)
    assert copy("global_lora", tmp_path / "mine.yaml") == [tmp_path / "mine.yaml"]
    with pytest.raises(ConfigError, match=r"no recipe is named global_lorax \(did you mean global_lora\?\)"):
        copy("global_lorax", tmp_path)


def test_copied_accelerate_deepspeed_config_points_at_its_copied_json(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    monkeypatch.chdir(tmp_path)  # accelerate reads deepspeed_config_file from where it is launched
    written = copy("accelerate/deepspeed_zero3", tmp_path / "launch")
    assert written == [tmp_path / "launch" / "deepspeed_zero3.yaml", tmp_path / "launch" / "zero3.json"]
    config = load_config_from_file(str(written[0]))
    referenced = tmp_path / config.deepspeed_config["deepspeed_config_file"]
    assert referenced.resolve() == written[1].resolve()
    assert json.loads(referenced.read_text())["zero_optimization"]["stage"] == 3


def test_version_names_the_commit_in_a_checkout():
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    )
    if commit.returncode != 0:
        pytest.skip("not a git checkout")
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(
        f"pigg {pigg.__version__} (commit {commit.stdout.strip()}"
    )


def test_env_reports_what_a_bug_report_needs():
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    import torch
    import transformers

    assert report["torch"]["version"] == torch.__version__
    assert report["libraries"]["transformers"] == transformers.__version__
    assert report["libraries"]["vllm"] is None  # not installed on this CPU machine
    assert report["threads"]["torch_intra_op"] == torch.get_num_threads()
    # the plain text, on a report as a GPU machine would give it
    report["torch"] |= {"cuda": "12.8", "rocm": None, "cudnn": 91002}
    report["gpus"] = [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2}]
    lines = describe(report).splitlines()
    assert f"torch {torch.__version__} (CUDA 12.8, cuDNN 91002)" in lines
    assert "  0: NVIDIA H100 80GB HBM3, 79.2 GiB" in lines
    assert any(line.split() == ["vllm", "not", "installed"] for line in lines)
