"""`pigg compare` builds seed 002's report from the logs of two tiny runs; seed 002's recipes load and
resolve on the real Qwen3-VL-4B."""

import json

import pytest

from conftest import asset
from pigg.cli import app
from pigg.config import load_config
from pigg.errors import ConfigError
from pigg.models.params import parameter_report
from pigg.recipes import deepspeed_config
from pigg.train.compare import compare_runs, read_run, smoothed
from pigg.train.run import train


def test_smoothing_is_tensorboards_debiased_average():
    assert smoothed([]) is None
    # pytest.approx's default tolerance (relative 1e-6) on float64 arithmetic of hand-written numbers: no CPU
    # changes IEEE sums and quotients of a few terms (noise ~1e-16); a wrong formula moves them by more than 1e-2.
    assert smoothed([2.0]) == pytest.approx(2.0)
    # by hand: a1 = 0.4*1, a2 = 0.6*a1 + 0.4*3 = 1.44; debias by 1 - 0.6^2 = 0.64
    assert smoothed([1.0, 3.0]) == pytest.approx(1.44 / 0.64)


def test_report_from_two_tiny_runs(tiny_config, tmp_path):
    common = (
        "data.train_users=1-2",
        "data.test_users=3",
        "train.eval=true",
        "train.max_steps=4",
        "train.save_steps=2",
    )
    train(
        tiny_config(
            *common, "run_name=fast", f"train.output_dir={tmp_path / 'fast'}", "train.learning_rate=5e-3"
        )
    )
    train(
        tiny_config(
            *common, "run_name=slow", f"train.output_dir={tmp_path / 'slow'}", "train.learning_rate=1e-5"
        )
    )
    fast, slow = read_run(tmp_path / "fast"), read_run(tmp_path / "slow")
    assert [s for s, _ in fast.eval] == [2, 4] and len(fast.train) == 4
    assert fast.smooth("eval") < slow.smooth("eval")  # a real lr beats a negligible one

    from typer.testing import CliRunner

    result = CliRunner().invoke(
        app, ["compare", str(tmp_path / "slow"), str(tmp_path / "fast"), "--out", str(tmp_path / "cmp")]
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert (
        "| run | eval loss (smoothed) | eval loss (final) | train loss (smoothed) | train loss (final) |"
        in text
    )
    assert "**Winner**: `fast`" in text and "better than `slow`" in text
    rows = [line for line in text.splitlines() if line.startswith("| fast") or line.startswith("| slow")]
    assert rows[0].startswith("| fast ✅") and "| 4 |" in rows[0]
    assert (tmp_path / "cmp" / "loss_curves.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert {d["run"] for d in data} == {"fast", "slow"}
    assert data[0]["gap"] == pytest.approx(data[0]["eval_loss_smoothed"] - data[0]["train_loss_smoothed"])


def test_compare_reads_a_stopped_run_from_its_checkpoint_and_refuses_one_run(tiny_config, tmp_path):
    train(tiny_config("train.max_steps=2", "train.save_steps=2"))
    (tmp_path / "run" / "pigg_run.json").write_text(json.dumps({"run": "run", "status": "running"}))
    curves = read_run(tmp_path / "run")
    assert curves.steps == 2 and len(curves.train) == 2
    with pytest.raises(ConfigError, match="at least two"):
        compare_runs([tmp_path / "run"], tmp_path / "out")


@pytest.mark.parametrize(
    ("recipe", "vision_trainable", "accumulation"),
    [("last6_lora", 6 * 262_144, 2), ("last6_full", 6 * 12_596_224, 2), ("all_lora", 24 * 262_144, 2), ("all_full", 306_242_560, 4)],
)  # fmt: skip
def test_seed_002_recipes(recipe, vision_trainable, accumulation):
    cfg = load_config(f"seed002_{recipe}", [f"model.name={asset('qwen3-vl-4b-instruct')}"])
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.1)
    assert (cfg.train.learning_rate, cfg.train.aligner_lr, cfg.train.weight_decay) == (1e-4, 1e-4, 0.1)
    assert (cfg.train.warmup_ratio, cfg.train.batch_size, cfg.train.grad_accum) == (0.2, 2, accumulation)
    assert cfg.data.packing and cfg.train.deepspeed == "zero2"
    assert json.loads(deepspeed_config(cfg.train.deepspeed).read_text())["zero_optimization"]["stage"] == 2
    parts = {p["part"]: p for p in parameter_report(cfg)["parts"]}
    assert parts["vision"]["trainable"] == vision_trainable
    assert parts["llm"]["indices"] == [34, 35] and parts["aligner"]["method"] == "full"


def test_deepspeed_on_cpu_says_it_needs_a_gpu(tiny_config, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text("{}")
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train(tiny_config("train.parallel=deepspeed", f"train.deepspeed={config}"))
