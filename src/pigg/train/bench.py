"""`pigg bench`: training paths side by side on the same model and the same samples, in one process,
interleaved and repeated, so that every ratio compares like with like.

A path is a set of config overrides on top of the benchmarked config:
- `baseline`: seed 000's recipe as written: batch 1 x accumulation E (E: the config's effective batch),
  padding per sample, no packing, gradient checkpointing on, the default attention.
- `default`: pigg's shipped defaults for the speed settings, at the same effective batch.
- `default-<x>`: the default with one of its choices turned back (an ablation).

Each run trains `warmup + steps` optimizer steps from the same initial weights on the same samples in the
same order (the Trainer's seeded sampler), times the last `steps`, and records the losses; the same
samples per optimizer step make the losses after the same number of samples comparable.
"""

from __future__ import annotations

import gc
import json
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pigg.config import DataSection, ExperimentConfig, TrainSection, load_config
from pigg.errors import ConfigError
from pigg.train.measure import PeakMemory, human_bytes, median, timed_run

# Paths run only when named in --paths: torch.compile recompiles for every new sequence length on CPU
# and takes minutes.
OPT_IN = ("default+compile",)

# Dense bf16 peak of the GPUs pigg reports MFU for (no sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def speed_settings(effective: int) -> dict[str, list[str]]:
    """The benchmarked paths as overrides, at one effective batch."""
    defaults = TrainSection()
    micro = min(effective, defaults.batch_size)
    default = [
        f"train.batch_size={micro}",
        f"train.grad_accum={max(1, effective // micro)}",
        f"train.gradient_checkpointing={defaults.gradient_checkpointing}",
        f"data.packing={DataSection.model_fields['packing'].default}",
        f"train.num_workers={defaults.num_workers}",
    ]
    return {
        "baseline": [
            "train.batch_size=1",
            f"train.grad_accum={effective}",
            "train.gradient_checkpointing=true",
            "data.packing=false",
            "train.num_workers=0",
        ],
        "default": default,
        "default+packing": [*default, "data.packing=true"],
        "default-no-workers": [*default, "train.num_workers=0"],
        "default-micro-batch-1": [*default, "train.batch_size=1", f"train.grad_accum={effective}"],
        "default+checkpointing": [*default, "train.gradient_checkpointing=true"],
        "default+length-grouping": [*default, "train.group_by_length=true"],
        "default+compile": [*default, "train.torch_compile=true"],
    }


@dataclass
class PathRun:
    samples_per_second: float
    step_seconds: list[float]
    losses: list[float]
    peak_memory: int
    peak_reserved: int | None


@dataclass
class PathResult:
    name: str
    overrides: list[str]
    runs: list[PathRun] = field(default_factory=list)
    # filled by summarize()
    samples_per_second: float = 0.0
    text_tokens_per_second: float = 0.0
    image_tokens_per_second: float = 0.0
    step_median: float = 0.0
    step_min: float = 0.0
    step_max: float = 0.0
    peak_memory: int = 0
    peak_reserved: int | None = None
    mfu: float | None = None
    loss_last_step: float = 0.0
    loss_mean: float = 0.0
    ratio_to_baseline: float | None = None


def _flops_per_sample(model, cfg: ExperimentConfig, text: float, image: float) -> float:
    """Model FLOPs per sample: 6N per LLM token when the LLM trains fully, 4N with LoRA on a frozen base
    (forward, and backward through activations only); the vision tower's forward (2N per patch, 4 patches
    per image token after the 2x2 merge), times 3 when it trains."""
    from pigg.models.loading import resolve_family
    from pigg.models.trainable import count_by_part

    counts = count_by_part(model, resolve_family(cfg.model.name, cfg.model.family))
    llm = counts["llm"][1]
    vision = counts["vision"][1] + counts["aligner"][1]
    per_llm_token = 6 * llm if cfg.llm_method == "full" else 4 * llm
    vision_factor = 3 if cfg.vision.method != "frozen" else 1
    return per_llm_token * (text + image) + vision_factor * 2 * vision * image * 4


def run_path(cfg: ExperimentConfig, data, warmup: int, steps: int) -> tuple[PathRun, object]:
    import torch

    scratch = Path(tempfile.mkdtemp(prefix="pigg_bench_"))
    try:
        torch.manual_seed(cfg.train.seed)
        model, trainer, timer = timed_run(
            cfg,
            data,
            scratch,
            max_steps=warmup + steps,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1,
            warmup_steps=0,
            lr_scheduler_type="constant",
        )
        with PeakMemory() as peak:
            trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        measured = timer.steps[warmup:]
        effective = cfg.train.batch_size * cfg.train.grad_accum
        run = PathRun(
            samples_per_second=effective * len(measured) / sum(measured),
            step_seconds=measured,
            losses=losses,
            peak_memory=peak.result.bytes,
            peak_reserved=peak.result.reserved,
        )
        return run, model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _gpu_peak() -> tuple[str | None, float | None]:
    import torch

    if not torch.cuda.is_available():
        return None, None
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return name, peak


def bench(
    config: str | Path,
    overrides: list[str] | None = None,
    paths: list[str] | None = None,
    steps: int = 6,
    warmup: int = 2,
    repeat: int = 2,
    out: str | Path = "bench",
    progress=print,
) -> Path:
    """Run the paths interleaved `repeat` times; write OUT/bench.json and OUT/bench.md, return the JSON."""
    import torch
    import transformers

    from pigg.train.run import prepare_data

    base = load_config(config, overrides)
    effective = base.train.batch_size * base.train.grad_accum
    available = speed_settings(effective)
    names = paths or [n for n in available if n not in OPT_IN]
    unknown = [n for n in names if n not in available]
    if unknown or "baseline" not in names:
        raise ConfigError(
            f"--paths: {', '.join(unknown) or 'baseline missing'}; known: {', '.join(available)}"
        )
    needed = (warmup + steps) * effective
    scratch = Path(tempfile.mkdtemp(prefix="pigg_bench_data_"))
    data = prepare_data(base, scratch)
    if len(data.train) < needed:
        raise ConfigError(
            f"the bench needs {needed} samples ((warmup+steps) x {effective}); the data has {len(data.train)}"
        )
    data = data.head(needed)
    text_per_sample = sum(t for t, _ in data.tokens()) / needed
    image_per_sample = sum(i for _, i in data.tokens()) / needed
    results = {n: PathResult(n, available[n]) for n in names}
    flops_per_sample = None
    for r in range(repeat):
        for name in names:
            cfg = load_config(config, [*(overrides or []), *available[name], "train.max_steps=-1"])
            progress(f"[repeat {r + 1}/{repeat}] {name}: {warmup} warm-up + {steps} timed steps")
            run, model = run_path(cfg, data, warmup, steps)
            results[name].runs.append(run)
            if flops_per_sample is None:  # the same architecture and parts train on every path
                flops_per_sample = _flops_per_sample(model, cfg, text_per_sample, image_per_sample)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    gpu, peak_flops = _gpu_peak()
    for result in results.values():
        _summarize(result, text_per_sample, image_per_sample, flops_per_sample, peak_flops)
    baseline = results["baseline"].samples_per_second
    for result in results.values():
        result.ratio_to_baseline = round(result.samples_per_second / baseline, 3)

    import peft

    report = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "gpu": gpu,
            "gpu_peak_bf16_flops": peak_flops,
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "model": _model_shape(base),
        "data": {
            "samples": needed,
            "text_tokens_per_sample": round(text_per_sample, 1),
            "image_tokens_per_sample": round(image_per_sample, 1),
            "effective_batch": effective,
        },
        "settings": {"steps": steps, "warmup": warmup, "repeat": repeat, "config": str(config)},
        "flops_per_sample": flops_per_sample,
        "paths": {name: _public(result) for name, result in results.items()},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.json"
    path.write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
    shutil.rmtree(scratch, ignore_errors=True)
    return path


def _summarize(result: PathResult, text: float, image: float, flops: float, peak: float | None) -> None:
    steps = [s for run in result.runs for s in run.step_seconds]
    result.samples_per_second = round(median([run.samples_per_second for run in result.runs]), 3)
    result.text_tokens_per_second = round(result.samples_per_second * text, 1)
    result.image_tokens_per_second = round(result.samples_per_second * image, 1)
    result.step_median, result.step_min, result.step_max = (
        round(x, 4) for x in (median(steps), min(steps), max(steps))
    )
    result.peak_memory = max(run.peak_memory for run in result.runs)
    reserved = [run.peak_reserved for run in result.runs if run.peak_reserved is not None]
    result.peak_reserved = max(reserved) if reserved else None
    result.mfu = round(result.samples_per_second * flops / peak, 4) if peak else None
    last = result.runs[0].losses
    result.loss_last_step = round(last[-1], 4)
    result.loss_mean = round(sum(last) / len(last), 4)


def _public(result: PathResult) -> dict:
    data = asdict(result)
    data["runs"] = [
        {"samples_per_second": round(r.samples_per_second, 3), "losses": r.losses} for r in result.runs
    ]
    return data


def _model_shape(cfg: ExperimentConfig) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(cfg.model.name)
    text, vision = config.text_config, config.vision_config
    return {
        "name": cfg.model.name,
        "model_type": config.model_type,
        "llm_layers": text.num_hidden_layers,
        "hidden_size": text.hidden_size,
        "vision_depth": getattr(vision, "depth", None),
        "vision_hidden": getattr(vision, "hidden_size", None),
        "method": {"llm": cfg.llm_method, "vision": cfg.vision.method, "aligner": cfg.aligner},
    }


def markdown(report: dict) -> str:
    gpu = report["machine"]["gpu"]
    lines = [
        f"machine: {report['machine']['platform']}, {gpu or 'CPU'} ({report['machine']['cpu_threads']} threads); "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"model: {report['model']['name']} ({report['model']['llm_layers']} LLM layers, hidden "
        f"{report['model']['hidden_size']}, vision depth {report['model']['vision_depth']}); data: "
        f"{report['data']['text_tokens_per_sample']} text + {report['data']['image_tokens_per_sample']} image tokens "
        f"per sample, effective batch {report['data']['effective_batch']}; {report['settings']['steps']} timed steps "
        f"x {report['settings']['repeat']} repeats, interleaved",
        "",
        "| path | samples/s | x baseline | text tok/s | image tok/s | step s median (min-max) | peak memory | MFU "
        "| loss, last step | loss, mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in report["paths"].items():
        mfu = f"{100 * p['mfu']:.1f}%" if p["mfu"] is not None else "-"
        lines.append(
            f"| {name} | {p['samples_per_second']:.2f} | {p['ratio_to_baseline']:.2f} | "
            f"{p['text_tokens_per_second']:.0f} | {p['image_tokens_per_second']:.0f} | "
            f"{p['step_median']:.3f} ({p['step_min']:.3f}-{p['step_max']:.3f}) | {human_bytes(p['peak_memory'])} | "
            f"{mfu} | {p['loss_last_step']:.4f} | {p['loss_mean']:.4f} |"
        )
    return "\n".join(lines) + "\n"
