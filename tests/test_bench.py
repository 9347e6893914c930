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
    path = result.output.strip().splitlines()[-1]
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
    for key in ("machine", "versions", "model", "settings", "flops_per_sample"):
        assert report[key], key
    table = (tmp_path / "b" / "bench.md").read_text()
    assert "| baseline |" in table and "| default |" in table
