"""GRPO speed: pigg's `train.stage: grpo` against the plain TRL script a user would write, in one run.

    python benchmarks/grpo_speed.py [--steps 12] [--out bench_grpo]

Both train the same tiny Qwen3-VL (built here) on the same synthetic screens (real screen sizes, 1170x2532
to 2560x1440), with the same reward (a click inside the target box), the same GRPO settings (16 answers a
step: 2 screenshots x 8, at most 10 new tokens, temperature 1, lr 1e-3) and the same LoRA (r16 on the
language model's linear layers). The plain script keeps TRL's documented VLM layout: an `image` column of
decoded screenshots and `{"type": "image"}` placeholders in the prompt, its own reward function reading
Qwen3-VL's 0-1000 coordinates. pigg builds the prompt as SFT and evaluation do, reads screenshots
through its image cache (decoded and resized once), and scores with the grounding task.

TRL's own defaults are bf16 mixed precision and gradient checkpointing, which pigg sets from the machine
and the config instead (fp32 and none here); a second plain run with those matched isolates the rest.
Reported, per side: answers/s over the steps after the first two (median step time), and the share of the
step spent in generation (TRL's `_generate`: the prompts' processing and the sampling, timed by the same
wrapper on both sides), and the tokens per step (equal on both sides, or they did not see the same work).
A pigg run without its image cache says how much of the difference the cache makes.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Step end times, and the tokens TRL counts (prompt with its image tokens, and answers) per step."""

    def __init__(self):
        self.ends: list[float] = []
        self.tokens: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.tokens.append(float(logs["num_tokens"]))


def timed_generation():
    """Wrap GRPOTrainer._generate to add up its seconds; returns the list the wrapper appends to."""
    from trl import GRPOTrainer

    spent: list[float] = []
    original = getattr(
        GRPOTrainer, "_untimed_generate", GRPOTrainer._generate
    )  # never a wrapper of a wrapper
    GRPOTrainer._untimed_generate = original

    def wrapper(self, prompts):
        began = time.perf_counter()
        try:
            return original(self, prompts)
        finally:
            spent.append(time.perf_counter() - began)

    GRPOTrainer._generate = wrapper
    return spent


def summary(clock: StepClock, generation: list[float], answers_per_step: int) -> dict:
    steps = [b - a for a, b in zip(clock.ends[1:], clock.ends[2:], strict=False)]  # after 2 warm-up steps
    step = statistics.median(steps)
    return {
        "answers_per_second": round(answers_per_step / step, 2),
        "median_step_seconds": round(step, 3),
        "generation_share": round(sum(generation[2:]) / sum(steps), 3),
        "steps_timed": len(steps),
        # the same on both sides, or the two did not see the same prompts and images
        "tokens_per_step": round((clock.tokens[-1] - clock.tokens[0]) / (len(clock.tokens) - 1), 1),
    }


def plain_trl(model_dir: Path, data: Path, steps: int, scratch: Path, matched: bool = False) -> dict:
    """What a user would write with TRL alone: with TRL's defaults (bf16 mixed precision and gradient
    checkpointing on), or `matched` to pigg's choices here (fp32 on CPU, no checkpointing)."""
    import datasets
    from peft import LoraConfig
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    from pigg.data.readers import read_samples
    from pigg.models.loading import load_model, load_processor, resolve_family
    from pigg.models.trainable import llm_linear_pattern

    samples = read_samples(data, None).samples
    rows = {"prompt": [], "image": [], "box": [], "width": [], "height": []}
    for s in samples:
        image = Image.open(data / s.image_refs()[0]).convert("RGB")
        rows["prompt"].append(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.instruction()}]}]
        )
        rows["image"].append(image)
        rows["box"].append(list(s.target.box))
        rows["width"].append(image.width)
        rows["height"].append(image.height)
    dataset = datasets.Dataset.from_dict(rows)

    def inside(completions, box, width, height, **_):
        rewards = []
        for completion, (x1, y1, x2, y2), w, h in zip(completions, box, width, height, strict=True):
            match = re.search(r"\((\d+), (\d+)\)", completion[-1]["content"])
            x, y = (int(match[1]) / 1000 * w, int(match[2]) / 1000 * h) if match else (-1, -1)
            rewards.append(float(x1 <= x <= x2 and y1 <= y <= y2))
        return rewards

    family = resolve_family(str(model_dir))
    processor = load_processor(str(model_dir), family)
    processor.tokenizer.padding_side = "left"
    model = load_model(str(model_dir), torch.float32, None, None, None)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=llm_linear_pattern(model, family))
    args = GRPOConfig(output_dir=str(scratch / "plain"), per_device_train_batch_size=16, num_generations=8,
                      max_completion_length=10, learning_rate=1e-3, max_steps=steps, logging_steps=1,
                      save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=42,
                      **({"bf16": False, "gradient_checkpointing": False} if matched else {}))  # fmt: skip
    clock, generation = StepClock(), timed_generation()
    trainer = GRPOTrainer(model=model, reward_funcs=[inside], args=args, train_dataset=dataset,
                          processing_class=processor, peft_config=lora, callbacks=[clock])  # fmt: skip
    trainer.train()
    return summary(clock, generation, 16)


def pigg_grpo(model_dir: Path, data: Path, steps: int, scratch: Path, cache: bool = True) -> dict:
    """pigg's stage; `cache` False reads every screenshot from its file as the plain script does."""
    from pigg.config import build_config
    from pigg.train.run import train

    raw = {
        "model": {"name": str(model_dir)},
        "data": {"path": str(data), "train_users": "all", "max_length": 4096, "image_cache": str(scratch / "cache") if cache else None},
        "train": {"stage": "grpo", "method": "lora", "output_dir": str(scratch / f"pigg{int(cache)}"), "log_dir": str(scratch),
                  "learning_rate": 1e-3, "batch_size": 16, "max_steps": steps, "logging_steps": 1,
                  "save_steps": steps * 10, "gradient_checkpointing": False, "report_to": [], "num_workers": 0},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "rl": {"num_generations": 8, "max_completion_length": 10, "rewards": {"inside": 1.0}},
    }  # fmt: skip
    clock, generation = StepClock(), timed_generation()
    train(build_config(raw, []), callbacks=[clock])
    return summary(clock, generation, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="bench_grpo")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from pigg.data.synth.screens import synthesize
    from pigg.models.tiny import build_tiny
    from pigg.train.measure import machine_report

    with tempfile.TemporaryDirectory(prefix="pigg_bench_grpo_") as folder:
        scratch = Path(folder)
        data = synthesize(scratch / "data", users=2, per_user=24, seed=0, layout="fixed")
        model = build_tiny("qwen3-vl", scratch / "tiny")
        report = {
            "machine": machine_report()[0],
            "settings": {
                "steps": args.steps,
                "answers_per_step": 16,
                "num_generations": 8,
                "max_new_tokens": 10,
            },
            "plain_trl": plain_trl(model, data, args.steps, scratch),
            "plain_trl_matched": plain_trl(model, data, args.steps, scratch, matched=True),
            "pigg": pigg_grpo(model, data, args.steps, scratch),
            "pigg_without_cache": pigg_grpo(model, data, args.steps, scratch, cache=False),
        }
    speed = {
        k: v["answers_per_second"] for k, v in report.items() if isinstance(v, dict) and "steps_timed" in v
    }
    report["ratio"] = round(speed["pigg"] / speed["plain_trl"], 3)
    report["ratio_matched"] = round(speed["pigg"] / speed["plain_trl_matched"], 3)
    report["ratio_without_cache"] = round(speed["pigg_without_cache"] / speed["plain_trl_matched"], 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_grpo.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
