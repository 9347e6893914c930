"""Seed 002's four-way vision experiment, demo-sized: tiny Qwen3-VL, synthetic users, 2 CPU cores.

Stage 1 (seed 002 started from a stage-2 merged checkpoint): full fine-tuning of the random tiny model on
users 3-12, so there is something to adapt. Then the four seed 002 recipes, unchanged except for what a
tiny CPU run needs: the tiny model's 2 vision blocks ("last:6" of 24 becomes "last:1" of 2), the tiny
model's image size (256x256 pixels, not 1280x28x28), no DeepSpeed, 120 steps, eval every 15 steps on held-out users 1-2, and every learning rate x10 (same
ratios) because the runs are 120 steps instead of 10k. Then `pigg compare` writes the report.

    .venv/bin/python benchmarks/seed002_tiny.py [--out seed002_tiny] [--report docs/seed002_tiny]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from pigg.config import load_config
from pigg.data.synth.screens import synthesize
from pigg.models.tiny import build_tiny
from pigg.train.compare import compare_runs
from pigg.train.run import train

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("last6_lora", "last6_full", "all_lora", "all_full")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("seed002_tiny"))
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "seed002_tiny")
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    started = time.perf_counter()
    out = args.out
    data, tiny = out / "data", out / "tiny-qwen3-vl"
    if not any(data.glob("user_*.pkl")):
        synthesize(data, users=12, per_user=80)
    if not (tiny / "config.json").exists():
        build_tiny("qwen3-vl", tiny)
    common = [
        f"data.path={data}",
        f"train.log_dir={out / 'logs'}",
        "data.test_users=1-2",
        "data.train_users=3-12",
    ]

    stage1 = out / "runs" / "stage1"
    if not (stage1 / "pigg_run.json").exists() or "losses" not in (stage1 / "pigg_run.json").read_text():
        print("stage 1: full fine-tuning of the tiny model (the base the four runs adapt)")
        overrides = [*common, f"model.name={tiny}", f"train.output_dir={stage1}", "train.max_steps=150"]
        train(load_config("demo_global", overrides))

    runs = []
    for name in RECIPES:
        recipe = load_config(f"seed002_{name}")
        scaled = {k: 10 * getattr(recipe.train, k) for k in ("learning_rate", "vision_lr", "aligner_lr")}
        run = out / "runs" / name
        shutil.rmtree(run, ignore_errors=True)
        overrides = [
            *common,
            f"model.name={stage1}",
            f"train.output_dir={run}",
            "train.deepspeed=null",
            f"train.max_steps={args.steps}",
            "train.eval_steps=15",
            f"train.save_steps={args.steps}",
            "train.gradient_checkpointing=false",
            "data.max_length=1024",
            "model.max_pixels=65536",  # the tiny model's own image size, not the recipe's 1280x28x28
            *(f"train.{k}={v}" for k, v in scaled.items()),
        ]
        if recipe.vision.blocks == "last:6":
            overrides.append("vision.blocks=last:1")
        print(f"\n=== {name} ===")
        train(load_config(f"seed002_{name}", overrides))
        runs.append(run)
    report = compare_runs(runs, args.report)
    print(report.read_text())
    print(f"{report} ({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
