"""`pigg bench-eval`: evaluation throughput, one screenshot at a time against batches, side by side.

One model is loaded once; the same samples go through greedy generation at each batch size, interleaved
and repeated, after an untimed pass that fills the image cache and one untimed batch per batch size.
The first batch size is the baseline (1 by default: one at a time, as seed 001's test script asks).
Besides screens/s, the report says how many answers agree with the baseline's and the click accuracy at
each batch size: batched generation pads prompts on the left, which may change a low-precision answer,
and a speed-up that changes answers has to say so.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pigg.errors import ConfigError
from pigg.train.measure import PeakMemory, human_bytes, machine_line, machine_report, median


@dataclass
class BatchResult:
    batch_size: int
    runs: list[float] = field(default_factory=list)  # screens/s of each timed pass
    screens_per_second: float = 0.0
    text_tokens_per_second: float = 0.0  # the sample's text as training counts it (answer included)
    image_tokens_per_second: float = 0.0
    answer_tokens_per_second: float = 0.0  # tokens generated
    peak_memory: int = 0
    peak_reserved: int | None = None
    accuracy: float = 0.0
    agreement_with_baseline: float = 1.0  # fraction of answers equal to the baseline batch size's
    ratio_to_baseline: float | None = None


def bench_eval(
    model: str,
    adapter: str | None = None,
    user: int | None = None,
    data: str | None = None,
    users: str | None = None,
    batch_sizes: list[int] = (1, 16),
    repeat: int = 2,
    max_samples: int | None = 64,
    max_new_tokens: int | None = None,
    out: str | Path = "bench_eval",
    progress=print,
) -> Path:
    """Time every batch size `repeat` times, interleaved; write OUT/bench_eval.json and .md, return the
    JSON's path."""
    from pigg.evaluation.answers import click_samples
    from pigg.evaluation.run import eval_config, run_task
    from pigg.infer import Agent, resolve_model
    from pigg.tasks.grounding import GroundingTask
    from pigg.train.build import prepare_data

    if not batch_sizes or min(batch_sizes) < 1 or repeat < 1:
        raise ConfigError(f"--batch-sizes must be positive integers and --repeat >= 1, not {batch_sizes}")
    ref = resolve_model(model, adapter, user)
    if run_task(ref) != "grounding":
        raise ConfigError(
            f"{model} is a {run_task(ref)} run: its throughput (items/s, latency p50/p95, tokens/s) is in "
            "`pigg eval`'s report; vary --batch-size there"
        )
    cfg = eval_config(ref, "grounding", data, users, max_samples)
    with tempfile.TemporaryDirectory(prefix="pigg_bench_eval_") as scratch:
        prepared = prepare_data(cfg, run_dir=Path(scratch))
    samples = prepared.train
    if not samples:
        raise ConfigError(f"no samples for users {cfg.data.train_users} in {cfg.data.path}")
    text_tokens = sum(t for t, _ in prepared.tokens()) / len(samples)
    image_tokens = sum(i for _, i in prepared.tokens()) / len(samples)
    agent = Agent.load(ref, image_cache=cfg.data.image_cache)
    agent.max_new_tokens = max_new_tokens or cfg.eval.max_new_tokens
    tokenizer = agent.processor.tokenizer

    progress(f"untimed pass over {len(samples)} samples (fills the image cache), one batch per batch size")
    click_samples(agent, samples, max(batch_sizes))
    for size in batch_sizes:  # the first timed pass of each size would otherwise pay its warm-up
        click_samples(agent, samples[:size], size)
    results = {b: BatchResult(b) for b in batch_sizes}
    answers: dict[int, list] = {}
    for r in range(repeat):
        for size in batch_sizes:
            progress(f"[repeat {r + 1}/{repeat}] batch size {size}")
            with PeakMemory() as peak:
                started = time.perf_counter()
                clicks = click_samples(agent, samples, size)
                seconds = time.perf_counter() - started
            result = results[size]
            result.runs.append(len(samples) / seconds)
            result.peak_memory = max(result.peak_memory, peak.result.bytes)
            if peak.result.reserved is not None:
                result.peak_reserved = max(result.peak_reserved or 0, peak.result.reserved)
            answers[size] = clicks

    baseline = batch_sizes[0]
    for size, result in results.items():
        clicks = answers[size]
        result.screens_per_second = round(median(result.runs), 3)
        result.text_tokens_per_second = round(result.screens_per_second * text_tokens, 1)
        result.image_tokens_per_second = round(result.screens_per_second * image_tokens, 1)
        generated = sum(len(tokenizer(c.raw, add_special_tokens=False)["input_ids"]) for c in clicks)
        result.answer_tokens_per_second = round(result.screens_per_second * generated / len(samples), 1)
        task = GroundingTask(cfg)
        scores = [task.score(c, s, agent.renderer) for c, s in zip(clicks, samples, strict=True)]
        result.accuracy = round(sum(s.hit for s in scores) / len(scores), 4)
        same = sum(a.raw == b.raw for a, b in zip(clicks, answers[baseline], strict=True))
        result.agreement_with_baseline = round(same / len(samples), 4)
        result.ratio_to_baseline = round(result.screens_per_second / results[baseline].screens_per_second, 3)

    machine, versions = machine_report()
    report = {
        "machine": machine,
        "versions": versions,
        "model": {"spec": ref.label, "base": ref.base, "adapters": list(ref.adapters)},
        "data": {
            "path": cfg.data.path,
            "users": cfg.data.train_users,
            "samples": len(samples),
            "text_tokens_per_sample": round(text_tokens, 1),
            "image_tokens_per_sample": round(image_tokens, 1),
            "image_cache": str(cfg.data.image_cache),
        },
        "settings": {"max_new_tokens": agent.max_new_tokens, "repeat": repeat, "baseline": baseline},
        "batch_sizes": {str(b): asdict(r) for b, r in results.items()},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench_eval.json"
    path.write_text(json.dumps(report, indent=2))
    (out / "bench_eval.md").write_text(markdown(report))
    return path


def markdown(report: dict) -> str:
    data, baseline = report["data"], report["settings"]["baseline"]
    lines = [
        machine_line(report),
        f"model: {report['model']['spec']}; {data['samples']} samples of users {data['users']}, "
        f"{data['text_tokens_per_sample']} text + {data['image_tokens_per_sample']} image tokens each; "
        f"at most {report['settings']['max_new_tokens']} new tokens, greedy; "
        f"{report['settings']['repeat']} repeats, interleaved",
        "",
        f"| batch size | screens/s | x batch {baseline} | text tok/s | image tok/s | answer tok/s | peak memory "
        f"| accuracy | answers equal to batch {baseline}'s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, r in report["batch_sizes"].items():
        lines.append(
            f"| {size} | {r['screens_per_second']:.2f} | {r['ratio_to_baseline']:.2f} | "
            f"{r['text_tokens_per_second']:.0f} | {r['image_tokens_per_second']:.0f} | "
            f"{r['answer_tokens_per_second']:.0f} | "
            f"{human_bytes(r['peak_memory'])} | {100 * r['accuracy']:.1f}% | "
            f"{100 * r['agreement_with_baseline']:.1f}% |"
        )
    return "\n".join(lines) + "\n"
