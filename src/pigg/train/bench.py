"""`pigg bench`: training paths side by side on the same model and the same samples, in one process,
interleaved and repeated, so that every ratio compares like with like.

A path is a set of config overrides on top of the benchmarked config:
- `baseline`: seed 000's recipe as written: batch 1 x accumulation E (E: the config's effective batch),
  padding per sample, no packing, gradient checkpointing on, the default attention.
- `default`: pigg's shipped defaults for the speed settings, at the same effective batch.
- `default-<x>`: the default with one of its choices turned back (an ablation).

Each run trains `warmup + steps` optimizer steps from the same initial weights on the same samples in the
same order (the Trainer's seeded sampler), times the last `steps`, and records the losses; the same
samples per optimizer step make the losses after the same number of samples comparable. Every run has a
process of its own, so no path inherits another's patched modules, compile caches or allocator state;
a path that runs out of GPU memory is reported as such and the others go on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pigg.config import DataSection, ExperimentConfig, TrainSection, load_config
from pigg.errors import ConfigError, PiggError
from pigg.train.build import timed_run
from pigg.train.measure import PeakMemory, human_bytes, machine_line, machine_report, median

# Paths run only when named in --paths: torch.compile recompiles for every new sequence length on CPU
# and takes minutes.
# Not run unless named: compile is slow to start; the approaches change what is trained or how the weights
# are stored, so they answer "what does QLoRA or full training cost", not "is the default fast".
OPT_IN = ("default+compile", "approach-qlora", "approach-full")

OOM = "out of memory"


def speed_settings(
    effective: int, cuda: bool = False, liger: bool = False, image_cache: str = "image_cache"
) -> dict[str, list[str]]:
    """The benchmarked paths as overrides, at one effective batch. Each ablation flips one of the default's
    choices as it resolves on this machine: checkpointing is on with CUDA and off on CPU, and Liger's
    kernels are only tried where they can run (`liger`: CUDA and liger-kernel installed).
    `image_cache`: the default's image cache, filled before it is timed (as every epoch after the first
    and every later run over the same data find it)."""
    defaults = TrainSection()
    # the largest micro-batch up to the default that divides the effective batch, so both stay equal
    micro = max(d for d in range(1, min(effective, defaults.batch_size) + 1) if effective % d == 0)
    default = [
        f"train.batch_size={micro}",
        f"train.grad_accum={effective // micro}",
        f"train.gradient_checkpointing={defaults.gradient_checkpointing}",
        f"data.packing={DataSection.model_fields['packing'].default}",
        f"train.num_workers={defaults.num_workers}",
        f"train.liger_kernel={defaults.liger_kernel}",
        f"train.logits={defaults.logits}",
        f"data.image_cache={image_cache}",
    ]
    checkpointing = "default-checkpointing" if cuda else "default+checkpointing"
    paths = {
        "baseline": [
            "train.batch_size=1",
            f"train.grad_accum={effective}",
            "train.gradient_checkpointing=true",
            "data.packing=false",
            "train.num_workers=0",
            "train.liger_kernel=false",
            "train.logits=all",
            "data.image_cache=null",
        ],
        "default": default,
        "default+packing": [*default, "data.packing=true"],
        "default-no-workers": [*default, "train.num_workers=0"],
        "default-micro-batch-1": [*default, "train.batch_size=1", f"train.grad_accum={effective}"],
        checkpointing: [*default, f"train.gradient_checkpointing={str(not cuda).lower()}"],
        "default+length-grouping": [*default, "train.group_by_length=true"],
        "default-no-image-cache": [*default, "data.image_cache=null"],
        "default-full-logits": [*default, "train.logits=all"],
        "default+chunked-loss": [*default, "train.logits=chunked"],
        "default+labelled-loss": [*default, "train.logits=labelled"],
        "default+compile": [*default, "train.torch_compile=true"],
        # seed 003's single-GPU approaches beside the (LoRA) default: the same samples and batch
        "approach-qlora": [*default, "model.quantization=nf4"],
        "approach-full": [*default, "train.method=full"],
    }
    if cuda and micro > 1:
        # where the default micro-batch does not fit without checkpointing, half of it may, at twice the
        # accumulation: which of the two is faster is the question checkpointing "only where memory
        # needs it" asks
        half = micro // 2
        paths["default-checkpointing-half-micro-batch"] = [
            *default,
            "train.gradient_checkpointing=false",
            f"train.batch_size={half}",
            f"train.grad_accum={effective // half}",
        ]
    if liger:
        paths["default+liger"] = [*default, "train.liger_kernel=true"]
    return paths


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
    # why the path has no figures: "out of memory: ..." (a result: it does not fit), or a failure
    error: str | None = None
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
    """Model FLOPs per sample from the architecture, 2 per weight per token for each matrix product:
    - LLM, every token: forward 2N; backward through activations 2N (always: something below the top
      trains); weight gradients 2N when it trains fully: 6N full, 4N LoRA or frozen. N leaves out the
      input embedding, a lookup, unless it is tied to the output layer.
    - vision blocks, 4 patches per image token (the 2x2 merge): forward 2N; backward through activations
      2N for the blocks from the first trained one up, weight gradients 2N for fully trained blocks.
    - aligner, per image token: forward 2N; trained: +2N (LoRA) or +4N (full).
    LoRA's own small matrices and attention's sequence-length term are not counted."""
    from pigg.models.loading import resolve_family
    from pigg.models.trainable import count_by_part, plan_parts

    family = resolve_family(cfg.model.name, cfg.model.family)
    counts = count_by_part(model, family)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embedding, output = base.get_input_embeddings(), base.get_output_embeddings()
    tied = output is not None and output.weight is embedding.weight
    llm = counts["llm"][1] - (0 if tied else embedding.weight.numel())
    llm_flops = (6 if cfg.llm_method == "full" else 4) * llm * (text + image)

    plans = plan_parts(
        base, family, cfg.llm_method, cfg.vision.method, cfg.aligner, cfg.vision.blocks, cfg.llm.layers
    )
    vision = next(p for p in plans if p.part == "vision")
    if vision.method == "frozen":
        reached = trained = 0.0
    else:
        chosen = vision.indices or list(range(vision.count))
        reached = (vision.count - chosen[0]) / vision.count  # backward runs from the top to the first one
        trained = len(chosen) / vision.count if vision.method == "full" else 0.0
    vision_flops = 2 * counts["vision"][1] * (1 + reached + trained) * 4 * image
    aligner_factor = {"frozen": 2, "lora": 4, "full": 6}[cfg.aligner]
    return llm_flops + vision_flops + aligner_factor * counts["aligner"][1] * image


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


def _child(queue, config, overrides, samples, warmup, steps, tokens, threads, start_method) -> None:
    """One path's run in a fresh process; puts {"run", "flops_per_sample"} or {"error", "oom"} on `queue`."""
    import multiprocessing
    import traceback

    import torch

    from pigg.train.build import PreparedData, load_renderer

    # as `pigg train` runs here: the parent's thread count, and dataloader workers started the same way
    # (a spawned process would otherwise spawn its workers too)
    torch.set_num_threads(threads)
    multiprocessing.set_start_method(start_method, force=True)
    try:
        cfg = load_config(config, overrides)
        data = PreparedData(*load_renderer(cfg), train=samples, eval=[])
        run, model = run_path(cfg, data, warmup, steps)
        queue.put({"run": asdict(run), "flops_per_sample": _flops_per_sample(model, cfg, *tokens)})
    except torch.OutOfMemoryError as exc:
        queue.put({"error": f"{OOM}: {str(exc).splitlines()[0]}", "oom": True})
    except Exception as exc:  # reported with the path; the other paths still run
        queue.put(
            {"error": f"{type(exc).__name__}: {exc}", "oom": False, "traceback": traceback.format_exc()}
        )


def run_isolated(config, overrides: list[str], samples, warmup: int, steps: int, tokens) -> dict:
    """Run one path in a fresh process, so that nothing one path leaves behind reaches the next: Liger's
    kernels patch transformers' modules for the whole process, torch.compile keeps its caches, and an
    out-of-memory run leaves the allocator fragmented."""
    import multiprocessing
    import queue as queues

    import torch

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=_child,
        args=(
            *(results, config, overrides, samples, warmup, steps, tokens),
            *(torch.get_num_threads(), multiprocessing.get_start_method()),
        ),
    )
    process.start()
    while True:
        try:
            outcome = results.get(timeout=2)
            break
        except queues.Empty:
            if not process.is_alive() and results.empty():
                outcome = {"error": f"the run's process died (exit code {process.exitcode})", "oom": False}
                break
    process.join()
    return outcome


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

    from pigg.train.build import liger_enabled, load_renderer, prepare_data

    base = load_config(config, overrides)
    effective = base.train.batch_size * base.train.grad_accum
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="pigg_bench_") as tmp:
        scratch = Path(tmp)
        image_cache = str(scratch / "image_cache")
        available = speed_settings(effective, cuda, liger_enabled("auto", cuda), image_cache)
        names = paths or [n for n in available if n not in OPT_IN]
        unknown = [n for n in names if n not in available]
        if unknown or "baseline" not in names:
            raise ConfigError(
                f"--paths: {', '.join(unknown) or 'baseline missing'}; known here: {', '.join(available)}"
            )
        needed = (warmup + steps) * effective
        data = prepare_data(base, scratch)
        if len(data.train) < needed:
            raise ConfigError(
                f"the bench needs {needed} samples ((warmup+steps) x {effective}); the data has {len(data.train)}"
            )
        data = data.head(needed)
        text_per_sample = sum(t for t, _ in data.tokens()) / needed
        image_per_sample = sum(i for _, i in data.tokens()) / needed
        results = {n: PathResult(n, available[n]) for n in names}
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "bench.json"
        tokens = (text_per_sample, image_per_sample)
        settings = {"steps": steps, "warmup": warmup, "repeat": repeat, "config": str(config)}

        def write(complete: bool) -> None:
            """The report so far: rewritten after every run, so a job killed at its time limit (a GPU
            machine's) still leaves every figure measured until then."""
            report = _report(base, results, needed, tokens, flops_per_sample)
            report["settings"] = {**settings, "complete": complete}
            for target, text in ((path, json.dumps(report, indent=2)), (out / "bench.md", markdown(report))):
                partial = target.with_name(target.name + ".partial")
                partial.write_text(text)
                os.replace(partial, target)  # a kill mid-write leaves the previous report whole

        if any(f"data.image_cache={image_cache}" in available[n] for n in names):
            renderer = load_renderer(load_config(config, [*(overrides or []), *available["default"]]))[2]
            for sample in data.train:
                for ref in sample.image_refs():
                    renderer.load_image(ref, sample.base_dir)
        flops_per_sample = None
        for r in range(repeat):
            for name in names:
                result = results[name]
                if result.error is not None:
                    continue  # a path that failed once (out of memory) fails again
                progress(f"[repeat {r + 1}/{repeat}] {name}: {warmup} warm-up + {steps} timed steps")
                outcome = run_isolated(
                    str(config),
                    [*(overrides or []), *available[name], "train.max_steps=-1"],
                    data.train,
                    warmup,
                    steps,
                    tokens,
                )
                if "error" in outcome:
                    result.error = outcome["error"]
                    progress(
                        f"  {name}: {result.error}"
                        + ("" if outcome["oom"] else "\n" + outcome.get("traceback", ""))
                    )
                else:
                    result.runs.append(PathRun(**outcome["run"]))
                    flops_per_sample = flops_per_sample or outcome["flops_per_sample"]
                    progress(f"  {name}: {result.runs[-1].samples_per_second:.3f} samples/s")
                write(complete=False)
        write(complete=True)
    failed = [f"{r.name}: {r.error}" for r in results.values() if r.error and not r.error.startswith(OOM)]
    if failed:
        raise PiggError(f"the report is in {path}, but some paths failed:\n  " + "\n  ".join(failed))
    return path


def _report(base: ExperimentConfig, results: dict, samples: int, tokens, flops_per_sample) -> dict:
    """Every path's figures, its ratio to the baseline, and what was measured on what."""
    text, image = tokens
    machine, versions = machine_report()
    peak_flops = machine["gpu_peak_bf16_flops"]
    for result in results.values():
        if result.runs:  # none yet: the report is being written while the bench runs
            _summarize(result, text, image, flops_per_sample, peak_flops)
    baseline = results["baseline"]
    for result in results.values():
        if result.runs and baseline.runs:
            result.ratio_to_baseline = round(result.samples_per_second / baseline.samples_per_second, 3)
    return {
        "machine": machine,
        "versions": versions,
        "model": _model_shape(base),
        "data": {
            "samples": samples,
            "text_tokens_per_sample": round(text, 1),
            "image_tokens_per_sample": round(image, 1),
            "effective_batch": base.train.batch_size * base.train.grad_accum,
        },
        "flops_per_sample": flops_per_sample,
        "paths": {name: _public(result) for name, result in results.items()},
    }


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
    # a vision-language config nests its parts; a text model's config is the language model itself
    text, vision = getattr(config, "text_config", config), getattr(config, "vision_config", None)
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
    lines = [
        machine_line(report),
        f"model: {report['model']['name']} ({report['model']['llm_layers']} LLM layers, hidden "
        f"{report['model']['hidden_size']}, "
        + (f"vision depth {depth}" if (depth := report["model"]["vision_depth"]) is not None else "text-only")
        + "); data: "
        f"{report['data']['text_tokens_per_sample']} text + {report['data']['image_tokens_per_sample']} image tokens "
        f"per sample, effective batch {report['data']['effective_batch']}; {report['settings']['steps']} timed steps "
        f"x {report['settings']['repeat']} repeats, interleaved",
        "",
        "| path | samples/s | x baseline | text tok/s | image tok/s | step s median (min-max) | peak memory | MFU "
        "| loss, last step | loss, mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if not report["settings"].get("complete", True):
        lines.insert(0, "**partial: the bench was still running or was stopped; figures so far**")
    for name, p in report["paths"].items():
        if p["error"] is not None or not p["runs"]:
            lines.append(f"| {name} | {p['error'] or 'not run yet'} |" + " - |" * 9)
            continue
        ratio = f"{p['ratio_to_baseline']:.2f}" if p["ratio_to_baseline"] is not None else "-"
        mfu = f"{100 * p['mfu']:.1f}%" if p["mfu"] is not None else "-"
        lines.append(
            f"| {name} | {p['samples_per_second']:.2f} | {ratio} | "
            f"{p['text_tokens_per_second']:.0f} | {p['image_tokens_per_second']:.0f} | "
            f"{p['step_median']:.3f} ({p['step_min']:.3f}-{p['step_max']:.3f}) | {human_bytes(p['peak_memory'])} | "
            f"{mfu} | {p['loss_last_step']:.4f} | {p['loss_mean']:.4f} |"
        )
    return "\n".join(lines) + "\n"
