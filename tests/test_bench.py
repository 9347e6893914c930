"""`pigg bench` runs its paths on the same samples and reports every field (not its timings)."""

import json
from pathlib import Path

import yaml

from pigg.cli import app

FIELDS = {
    "samples_per_second", "text_tokens_per_second", "image_tokens_per_second", "step_median", "step_min",
    "step_max", "peak_memory", "mfu", "loss_last_step", "loss_mean", "ratio_to_baseline", "overrides", "runs",
}  # fmt: skip


def test_bench_report_has_every_field(tiny_config, tmp_path):
    from typer.testing import CliRunner

    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(tiny_config("train.grad_accum=2", "train.batch_size=2").model_dump(mode="json"))
    )
    args = [
        "bench",
        str(config),
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeat",
        "2",
        "--out",
        str(tmp_path / "b"),
    ]
    result = CliRunner().invoke(app, [*args, "--paths", "baseline,default,default+packing"])
    assert result.exit_code == 0, result.output
    path = result.stdout.strip().splitlines()[-1]
    report = json.loads(Path(path).read_text())
    assert set(report["paths"]) == {"baseline", "default", "default+packing"}
    for name, figures in report["paths"].items():
        assert set(figures) >= FIELDS, name
        assert len(figures["runs"]) == 2 and figures["samples_per_second"] > 0
        assert figures["mfu"] is None  # no GPU here
        assert (
            figures["peak_memory"] > 0
            and figures["step_min"] <= figures["step_median"] <= figures["step_max"]
        )
        assert len(figures["runs"][0]["losses"]) == 3
    assert report["paths"]["baseline"]["ratio_to_baseline"] == 1.0
    assert "train.batch_size=1" in report["paths"]["baseline"]["overrides"]
    # the same samples in the same order: the first step's loss is the same on every path
    first = {n: f["runs"][0]["losses"][0] for n, f in report["paths"].items()}
    assert max(first.values()) - min(first.values()) < 1e-3, first
    assert report["data"]["effective_batch"] == 4 and report["data"]["image_tokens_per_sample"] > 0
    assert report["settings"]["complete"] is True
    assert not list((tmp_path / "b").glob("*.partial"))
    for key in ("machine", "versions", "model", "settings", "flops_per_sample"):
        assert report[key], key
    table = (tmp_path / "b" / "bench.md").read_text()
    assert "| baseline |" in table and "| default |" in table


def test_ablations_flip_the_default_as_it_resolves_on_the_machine():
    from pigg.train.bench import speed_settings

    cpu = speed_settings(8)
    assert "default+checkpointing" in cpu and "default+liger" not in cpu
    assert "train.liger_kernel=false" in cpu["baseline"]
    gpu = speed_settings(8, cuda=True, liger=True)
    assert gpu["default-checkpointing"][-1] == "train.gradient_checkpointing=false"
    assert gpu["default+liger"][-1] == "train.liger_kernel=true"
    assert gpu["default-checkpointing-half-micro-batch"][-3:] == [
        "train.gradient_checkpointing=false", "train.batch_size=4", "train.grad_accum=2",
    ]  # fmt: skip
    assert "default-checkpointing-half-micro-batch" not in cpu
    # the micro-batch divides the effective batch, so every path trains on the same samples per step
    shape = speed_settings(12)["default"][:2]
    assert shape == ["train.batch_size=6", "train.grad_accum=2"]


def test_a_failing_run_is_reported_with_its_path(tiny_config, tmp_path):
    from pigg.train.bench import markdown, run_isolated

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config().model_dump(mode="json")))
    outcome = run_isolated(str(config), ["train.no_such_key=1"], [], 1, 1, (1.0, 1.0))
    assert outcome["oom"] is False and "no_such_key" in outcome["error"]
    assert "Traceback" in outcome["traceback"]
    report = {
        "machine": {"platform": "p", "cpu_threads": 1, "gpu": None},
        "versions": {"torch": "t"},
        "model": {"name": "m", "llm_layers": 1, "hidden_size": 8, "vision_depth": 1},
        "data": {"text_tokens_per_sample": 1, "image_tokens_per_sample": 1, "effective_batch": 8},
        "settings": {"steps": 1, "repeat": 1, "complete": False},
        "paths": {
            "default-checkpointing": {"error": "out of memory: CUDA out of memory.", "runs": []},
            "default+liger": {"error": None, "runs": []},
        },
    }
    table = markdown(report)
    assert "| default-checkpointing | out of memory: CUDA out of memory. |" in table
    # the report is rewritten after every run: a stopped bench says so, and what had not run yet
    assert table.startswith("**partial") and "| default+liger | not run yet |" in table


def test_model_flops_follow_what_each_part_computes(tiny_config, tiny_model):
    import torch

    from pigg.models.families import QWEN3_VL
    from pigg.models.loading import load_model
    from pigg.models.trainable import apply_method
    from pigg.train.bench import _flops_per_sample

    plain = load_model(str(tiny_model), torch.float32)
    sizes = {"llm": 0, "vision": 0, "aligner": 0}
    for name, p in plain.named_parameters():
        if name.startswith(("model.visual.merger", "model.visual.deepstack_merger_list")):
            sizes["aligner"] += p.numel()
        elif name.startswith("model.visual"):
            sizes["vision"] += p.numel()
        elif "embed_tokens" not in name:  # a lookup, untied from lm_head: no FLOPs
            sizes["llm"] += p.numel()
    text, image = 30.0, 60.0

    def flops(*overrides):
        cfg = tiny_config(*overrides)
        model = apply_method(
            load_model(str(tiny_model), torch.float32), QWEN3_VL, cfg.llm_method, cfg.lora,
            cfg.vision.method, cfg.aligner, vision_blocks=cfg.vision.blocks, llm_layers=cfg.llm.layers,
        )  # fmt: skip
        return _flops_per_sample(model, cfg, text, image)

    # seed 000: LoRA on the LLM, the vision side frozen (forward only)
    seed000 = (
        4 * sizes["llm"] * (text + image) + 2 * sizes["vision"] * 4 * image + 2 * sizes["aligner"] * image
    )
    assert flops("train.method=lora") == seed000
    # the demo: everything trains fully
    full = 6 * sizes["llm"] * (text + image) + 6 * sizes["vision"] * 4 * image + 6 * sizes["aligner"] * image
    assert flops("train.method=full", "vision.method=full", "aligner=full") == full
    # the last of the tiny model's 2 vision blocks with LoRA: backward reaches half the tower
    selective = (
        4 * sizes["llm"] * (text + image) + 3 * sizes["vision"] * 4 * image + 6 * sizes["aligner"] * image
    )
    assert (
        flops("train.method=lora", "vision.method=lora", "vision.blocks=last:1", "aligner=full") == selective
    )
