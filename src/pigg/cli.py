"""The `pigg` command line. No logic lives here: each command parses its options and calls one function.

Heavy imports (torch, transformers) happen inside the commands, so `--gpus` is applied before CUDA starts
and `pigg --help` is instant.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from pigg.errors import PiggError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fine-tune vision-language models into GUI agents."
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and generate data.")
model_app = typer.Typer(no_args_is_help=True, help="Build embedded tiny models.")
recipes_app = typer.Typer(help="The recipes shipped with pigg: list them, copy one to edit.")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(recipes_app, name="recipes")


def _print_version(value: bool) -> None:
    if value:
        from pigg.environment import pigg_version

        print(f"pigg {pigg_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print pigg's version and exit"
        ),
    ] = False,
):
    """Fine-tune vision-language models into GUI agents."""


@app.command("env")
def environment(as_json: Annotated[bool, typer.Option("--json", help="print it as JSON")] = False):
    """What this installation runs: pigg, Python, torch and its CUDA/ROCm build, the libraries pigg
    trains with, GPUs with memory, thread settings. Paste it into a bug report."""
    from pigg.environment import collect, describe

    report = collect()
    print(json.dumps(report, indent=2) if as_json else describe(report))


@recipes_app.callback(invoke_without_command=True)
def recipes_list(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="print them as JSON")] = False
):
    """List the shipped recipes (name, model, how it trains, summary) and launch configs; every command
    that takes a CONFIG takes a recipe's name."""
    if ctx.invoked_subcommand:
        return
    from dataclasses import asdict

    from pigg.recipes import RECIPES, describe, launch_config_paths, recipe_paths

    infos = [describe(p) for p in recipe_paths()]
    launch = [p.relative_to(RECIPES).as_posix() for p in launch_config_paths()]
    if as_json:
        print(json.dumps({"recipes": [asdict(i) for i in infos], "launch_configs": launch}, indent=2))
        return
    rows = [("recipe", "model", "method", "about"), *((i.name, i.model, i.method, i.about) for i in infos)]
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    print(f"\nlaunch configs (accelerate launch --config_file, train.deepspeed): {', '.join(launch)}")
    print("`pigg train NAME` trains one as shipped; `pigg recipes copy NAME [DEST]` writes a copy to edit")


@recipes_app.command("copy")
def recipes_copy(
    name: Annotated[str, typer.Argument(help="a recipe or launch config, e.g. global_lora, accelerate/fsdp")],
    dest: Annotated[
        Path, typer.Argument(help="a file, or a folder to copy it into (made if need be)")
    ] = Path("."),
):
    """Write an editable copy of a shipped recipe or launch config; never overwrites."""
    from pigg.recipes import copy

    for path in copy(name, dest):
        print(path)


UserOpt = Annotated[int | None, typer.Option("--user", help="apply this user's adapter from RUN/users/ID")]
EvalDataOpt = Annotated[str | None, typer.Option(help="data folder or .jsonl (default: the run's data.path)")]
EvalUsersOpt = Annotated[str | None, typer.Option(help="user ids, e.g. 1-10 (default: the run's test users)")]
ConfigArg = Annotated[
    str, typer.Argument(help="a recipe's name (`pigg recipes`: global_lora, seed003/qlora) or a YAML file")
]
Overrides = Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")]


@app.command()
def train(
    config: ConfigArg,
    overrides: Overrides = None,
    gpus: Annotated[str | None, typer.Option(help="GPU ids to use, e.g. 0 or 0,1")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run's latest complete checkpoint")
    ] = False,
    resume_from: Annotated[
        Path | None, typer.Option(help="continue this checkpoint folder (also: --resume PATH)")
    ] = None,
    time_limit: Annotated[
        str | None, typer.Option(help="wall-clock budget (8h, 90m, 7:30:00); sets train.time_limit")
    ] = None,
    nproc: Annotated[
        int, typer.Option(help="training processes on this machine, one per GPU (runs torchrun)")
    ] = 1,
    nnodes: Annotated[int, typer.Option(help="machines in the job (with --node-rank, --master-addr)")] = 1,
    node_rank: Annotated[int, typer.Option(help="this machine's index among --nnodes, from 0")] = 0,
    master_addr: Annotated[str | None, typer.Option(help="address of node 0, for several nodes")] = None,
    master_port: Annotated[int, typer.Option(help="port on node 0 for the rendezvous")] = 29500,
):
    """Train a global agent (LoRA, QLoRA or full fine-tuning) from a recipe, in one process or several
    (--nproc, --nnodes; train.parallel says how they share the work).

    A run stopped by its time limit or by SIGTERM/SIGUSR1 saves a checkpoint and exits with code 75.
    """
    from pigg.train.control import JOB_STARTED, catch_stop_signals_early

    started = float(os.environ.get(JOB_STARTED, time.time()))
    from pigg.train.run import select_gpus

    select_gpus(gpus)
    from pigg.config import load_config
    from pigg.train.control import EXIT_RESUMABLE
    from pigg.train.launch import Topology, launch
    from pigg.train.run import end_process_group
    from pigg.train.run import train as run_training

    extra = [f"train.time_limit={time_limit}"] if time_limit else []
    cfg = load_config(config, [*(overrides or []), *extra])  # a bad config stops here, before torchrun
    topology = Topology(nproc, nnodes, node_rank, master_addr, master_port)
    if topology.distributed:
        os.environ[JOB_STARTED] = str(started)  # the time limit counts from this command's start
        worker = ["train", str(config), *(overrides or []), *extra]
        worker += ["--resume-from", str(resume_from)] if resume_from else ["--resume"] if resume else []
        raise SystemExit(launch(topology, worker, Path(cfg.train.output_dir)))
    catch_stop_signals_early()  # a training process, alone or one of torchrun's
    result = run_training(cfg, resume=str(resume_from) if resume_from else resume, started=started)
    end_process_group()
    # Under torchrun a worker's non-zero exit reads as a crash: its launcher turns the summary into 75.
    if result.stopped and "TORCHELASTIC_RUN_ID" not in os.environ:
        raise SystemExit(EXIT_RESUMABLE)


@app.command()
def plan(
    config: ConfigArg,
    overrides: Overrides = None,
    try_: Annotated[
        list[str] | None,
        typer.Option("--try", help="key=v1,v2,... to compare; several --try give every combination"),
    ] = None,
    warmup: Annotated[int, typer.Option(help="steps run before timing starts")] = 2,
    steps: Annotated[int, typer.Option(help="steps timed per configuration")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    gpus: Annotated[str | None, typer.Option(help="GPU ids to use, e.g. 0")] = None,
):
    """Measure a few steps and print the run's cost: steps, tokens, step time, total time, peak memory,
    checkpoint size, and whether it fits train.time_limit; one row per --try combination."""
    from pigg.train.run import select_gpus

    select_gpus(gpus)
    from pigg.train.plan import markdown, to_json
    from pigg.train.plan import plan as run_plan

    rows = run_plan(config, overrides, try_, warmup, steps, progress=lambda m: print(m, file=sys.stderr))
    print(to_json(rows) if as_json else markdown(rows))


@app.command()
def params(
    config: ConfigArg,
    overrides: Overrides = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    approaches: Annotated[
        bool,
        typer.Option(
            "--approaches",
            help="memory per GPU of LoRA, QLoRA, DDP, full, MP, FSDP, ZeRO-2/3 (weights, gradients, optimizer)",
        ),
    ] = False,
):
    """Which parts train, how, and their parameter counts, from the model's config alone (meta device)."""
    from pigg.config import load_config

    cfg = load_config(config, overrides)
    if approaches:
        from pigg.models import memory

        report = memory.approach_memory(cfg)
        print(memory.to_json(report) if as_json else memory.markdown(report))
        return
    from pigg.models.params import markdown, parameter_report, to_json

    report = parameter_report(cfg)
    print(to_json(report) if as_json else markdown(report))


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="two or more run folders")],
    out: Annotated[Path, typer.Option(help="report folder")] = Path("compare"),
):
    """Compare runs from their logs: final and smoothed train/eval loss, steps, time, gap, the winner, and
    loss curves (compare.md, loss_curves.png)."""
    from pigg.train.compare import compare_runs

    path = compare_runs(runs, out)
    print(path.read_text())
    print(path)


@app.command()
def bench(
    config: ConfigArg,
    overrides: Overrides = None,
    steps: Annotated[int, typer.Option(help="timed optimizer steps per run")] = 6,
    warmup: Annotated[int, typer.Option(help="untimed steps before them")] = 2,
    repeat: Annotated[int, typer.Option(help="runs per path, interleaved")] = 2,
    paths: Annotated[str | None, typer.Option(help="comma-separated paths (default: all)")] = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("bench"),
    gpus: Annotated[str | None, typer.Option(help="GPU ids to use, e.g. 0")] = None,
):
    """Training paths side by side (seed 000's baseline, pigg's default, ablations): samples/s, tokens/s,
    step time, peak memory, MFU on GPU, loss after the same samples, ratio to the baseline."""
    from pigg.train.run import select_gpus

    select_gpus(gpus)
    from pigg.train.bench import bench as run_bench

    chosen = [p.strip() for p in paths.split(",")] if paths else None
    path = run_bench(
        config, overrides, chosen, steps, warmup, repeat, out, progress=lambda m: print(m, file=sys.stderr)
    )
    print(path.with_name("bench.md").read_text())
    print(path)


@app.command("bench-eval")
def bench_eval(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    user: UserOpt = None,
    data: EvalDataOpt = None,
    users: EvalUsersOpt = None,
    batch_sizes: Annotated[str, typer.Option(help="comma-separated; the first is the baseline")] = "1,16",
    repeat: Annotated[int, typer.Option(help="timed passes per batch size, interleaved")] = 2,
    max_samples: Annotated[int | None, typer.Option(help="screens per pass")] = 64,
    max_new_tokens: int | None = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("bench_eval"),
    gpus: Annotated[str | None, typer.Option(help="GPU ids to use, e.g. 0")] = None,
):
    """Eval throughput, one screenshot at a time vs batched, on the same samples: screens/s, tokens/s,
    peak memory, accuracy and how many answers batching changed."""
    from pigg.train.run import select_gpus

    select_gpus(gpus)
    from pigg.grounding.throughput import bench_eval as run_bench_eval

    if model is None:
        raise PiggError("pigg bench-eval needs --model")
    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise PiggError(f"--batch-sizes: {batch_sizes!r} is not a comma-separated list of integers") from None
    path = run_bench_eval(
        model, adapter, user, data, users, sizes, repeat, max_samples, max_new_tokens, out,
        progress=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    print(path.with_name("bench_eval.md").read_text())
    print(path)


@app.command()
def sbatch(
    config: ConfigArg,
    overrides: Overrides = None,
    gpus: Annotated[
        int, typer.Option(help="GPUs per node: 0 for CPU nodes; more than 1 runs --nproc (torchrun)")
    ] = 1,
    nodes: Annotated[int, typer.Option(help="nodes; more than 1 runs one launcher per node with srun")] = 1,
    time_: Annotated[
        str | None,
        typer.Option(
            "--time",
            help="job time as sbatch reads it (a bare number is minutes; 7:30:00, 2-00:00:00) or 8h, 90m; "
            "default train.time_limit or 8h",
        ),
    ] = None,
    signal_before: Annotated[
        int | None,
        typer.Option(
            help="seconds before the limit SLURM sends SIGUSR1 (default 300, or a tenth of the job)"
        ),
    ] = None,
    partition: str | None = None,
    account: str | None = None,
    cpus: Annotated[
        int | None,
        typer.Option(help="CPUs per node (default 8 per GPU, at most the partition's largest node: sinfo)"),
    ] = None,
    mem: Annotated[str | None, typer.Option(help="memory per node, e.g. 200G")] = None,
    python: Annotated[
        Path | None, typer.Option(help="the Python that runs pigg in the job (default: this pigg's own)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="script file (default: print it)")] = None,
):
    """Write a SLURM batch script: resume on start, save before the limit, requeue until the run is done.

    SLURM's own output goes to train.log_dir, which is created now: SLURM opens it before the script runs.
    """
    from pigg.config import load_config
    from pigg.train.slurm import job_cpus, largest_node_cpus, sbatch_script

    try:
        node_cpus = largest_node_cpus(partition) if cpus is None else None
        script = sbatch_script(
            config, overrides, gpus, time_, nodes, signal_before, partition, account, cpus, mem,
            python=python, node_cpus=node_cpus,
        )  # fmt: skip
        lowered = job_cpus(gpus, cpus, node_cpus)[1]
    except ValueError as exc:
        raise PiggError(str(exc)) from None
    if lowered:
        print(f"pigg sbatch: {lowered}", file=sys.stderr)
    Path(load_config(config, overrides).train.log_dir).mkdir(parents=True, exist_ok=True)
    if out is None:
        print(script, end="")
        return
    out.write_text(script)
    out.chmod(0o755)
    print(f"wrote {out}; submit it with: sbatch {out}")


@app.command()
def merge(
    run: Annotated[str, typer.Argument(help="a LoRA run, an adapter folder, or a run with --user")],
    out: Annotated[Path, typer.Option(help="new folder for the merged model")],
    user: UserOpt = None,
    dtype: Annotated[
        str, typer.Option(help="auto (the base's dtype), bfloat16, float16 or float32")
    ] = "auto",
    max_shard_size: Annotated[str, typer.Option(help="safetensors shard size, e.g. 5GB")] = "5GB",
):
    """Merge a run's LoRA adapter(s) into the base weights and save a full model with its processor."""
    from pigg.publish import merge_run

    print(merge_run(run, out, user, dtype, max_shard_size))


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="a merged model, a run folder or an adapter folder")],
    repo_id: Annotated[str, typer.Option(help="OWNER/NAME on the Hugging Face Hub")],
    private: Annotated[bool, typer.Option(help="create the repo private")] = False,
    dry_run: Annotated[bool, typer.Option(help="list what would be uploaded; needs no token")] = False,
):
    """Upload a folder to the Hugging Face Hub with a model card built from the run's config and results."""
    from pigg.publish import push_folder

    print(push_folder(folder, repo_id, private, dry_run))


@data_app.command("show")
def data_show(
    config: ConfigArg,
    overrides: Overrides = None,
    sample: Annotated[int, typer.Option(help="index among the selected training samples")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print input_ids and labels as JSON")] = False,
):
    """Render one sample as the trainer sees it; trained tokens are shown between [[ and ]]."""
    from pigg.config import load_config
    from pigg.data.show import show_sample
    from pigg.train.run import prepare_data

    data = prepare_data(load_config(config, overrides), check=False)
    if not 0 <= sample < len(data.train):
        raise PiggError(f"--sample {sample} is out of range: {len(data.train)} samples selected")
    shown = show_sample(data.train[sample], data.renderer)
    if as_json:
        print(json.dumps(shown.to_json()))
        return
    print(f"# {shown.source}: {len(shown.input_ids)} tokens, {shown.trained_tokens} trained (between [[ ]])")
    print(shown.text)


@data_app.command("validate")
def data_validate(config: ConfigArg, overrides: Overrides = None):
    """Check the whole training (and eval) data set and list every problem."""
    from pigg.config import load_config
    from pigg.train.run import prepare_data

    data = prepare_data(load_config(config, overrides))
    print(
        f"ok: {len(data.train)} training samples" + (f", {len(data.eval)} eval samples" if data.eval else "")
    )


@data_app.command("stats")
def data_stats(
    config: ConfigArg,
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="folder for data_stats.json and the PNGs")] = Path("data_stats"),
):
    """Counts per class (or user) and sample lengths in tokens, as JSON and PNG plots, for the training
    data and the evaluation data (data.eval_path, test users or the held-out fraction)."""
    from pigg.config import load_config
    from pigg.data.stats import data_stats as write_stats
    from pigg.data.validate import validate
    from pigg.train.run import prepare_data

    cfg = load_config(config, overrides)
    cfg.train.eval = any(
        v is not None for v in (cfg.data.eval_path, cfg.data.test_users, cfg.data.eval_fraction)
    )
    data = prepare_data(cfg, run_dir=out)
    splits = {"train": (data.train, [t + i for t, i in data.tokens()])}
    if data.eval:
        tokens = validate(data.eval, data.renderer, cfg.data.max_length).tokens
        splits["eval"] = (data.eval, [t + i for t, i in tokens])
    labels = cfg.classify.labels if cfg.task == "classify" else None
    path = write_stats(splits, out, cfg.data.max_length, labels)
    for name, split in json.loads(path.read_text())["splits"].items():
        t = split["tokens"]
        print(
            f"{name}: {t['samples']} samples; tokens mean {t['mean']}, p50 {t['p50']}, p95 {t['p95']}, "
            f"max {t['max']}; " + ", ".join(f"{k} {v}" for k, v in split["counts"].items())
        )
    print(path)


@data_app.command("synth-news")
def data_synth_news(
    out: Annotated[Path, typer.Argument(help="the JSONL file to write")],
    count: Annotated[int, typer.Option(help="articles (the 4 classes in equal shares)")] = 1000,
    seed: int = 0,
):
    """Synthetic 4-class news articles in seed 004's chat rows, with its length spread (for task: classify)."""
    from pigg.data.synthetic_text import synthesize_news

    print(f"wrote {count} articles to {synthesize_news(out, count, seed)}")


@data_app.command("synth-describe")
def data_synth_describe(
    out: Annotated[Path, typer.Argument(help="folder for the pictures, describe.json and dataset_info.json")],
    count: Annotated[int, typer.Option(help="pictures")] = 200,
    seed: int = 0,
):
    """A tiny description task in LLaMA-Factory's format (pictures whose description says what is drawn),
    for free-text training and `pigg eval --metric similarity`."""
    from pigg.data.synthetic_describe import synthesize_descriptions

    print(f"wrote {count} described pictures to {synthesize_descriptions(out, count, seed)}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="folder to write user_<id>.pkl files and images/ into")],
    users: Annotated[int, typer.Option(help="number of users (ids 1..N)")] = 10,
    per_user: Annotated[int, typer.Option(help="samples per user")] = 20,
    habit_fraction: Annotated[float, typer.Option(help="share of samples that use a personal habit")] = 0.3,
    seed: int = 0,
    layout: Annotated[
        str, typer.Option(help="random: buttons anywhere; fixed: each label on its own cell")
    ] = "random",
    screen: Annotated[
        list[str] | None, typer.Option(help="screenshot size WxH, e.g. 1280x800 (repeatable; default: mixed)")
    ] = None,
):
    """Generate synthetic GUI screenshots with instructions, answers and per-user habits."""
    import re

    from pigg.data.synthetic import synthesize

    if layout not in ("random", "fixed"):
        raise PiggError(f"--layout {layout!r}: use 'random' or 'fixed'")
    sizes = []
    for text in screen or []:
        match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
        if not match or min(int(match[1]), int(match[2])) < 64:
            raise PiggError(f"--screen {text!r}: write width x height in pixels, e.g. 1280x800 (64 or more)")
        sizes.append((int(match[1]), int(match[2])))
    path = synthesize(out, users, per_user, habit_fraction, seed, layout, sizes or None)
    print(f"wrote {users} users x {per_user} samples to {path}")


@model_app.command("tiny")
def model_tiny(
    family: Annotated[
        str, typer.Argument(help="qwen3-vl, qwen2.5-vl, idefics3, idefics2, or the text-only qwen2.5, qwen3")
    ],
    out: Annotated[Path, typer.Argument(help="folder for the Hugging Face model")],
    seed: int = 0,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="a real model folder whose tokenizer, template and processor (full vocabulary) to use"
        ),
    ] = None,
):
    """Build a tiny random-weight model of a real architecture, with its own tokenizer and template (or a
    real model's, with --tokenizer)."""
    from pigg.data.synthetic_text import vocabulary
    from pigg.models.tiny import build_tiny

    folder = build_tiny(
        family, out, seed, tokenizer=str(tokenizer) if tokenizer else None, extra_words=vocabulary()
    )
    print(f"wrote tiny {family} model to {folder}")


@model_app.command("random")
def model_random(
    source: Annotated[str, typer.Argument(help="a folder or hub id with config.json and the processor")],
    out: Annotated[Path, typer.Argument(help="new folder for the Hugging Face model")],
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32")] = "bfloat16",
    device: Annotated[str, typer.Option(help="where to initialise the weights (cuda is fastest)")] = "cpu",
    seed: int = 0,
):
    """Build a full-size model with random weights from a config (no weights needed), for benchmarks."""
    from pigg.models.tiny import build_random

    if dtype not in ("bfloat16", "float16", "float32"):
        raise PiggError(f"--dtype {dtype!r}: use bfloat16, float16 or float32")
    print(f"wrote a random-weight copy of {source} to {build_random(source, out, dtype, device, seed)}")


ModelOpt = Annotated[
    str | None, typer.Option("--model", help="hub id, model folder, pigg run folder or adapter folder")
]
AdapterOpt = Annotated[str | None, typer.Option(help="a LoRA adapter folder to apply on top of --model")]


@app.command()
def predict(
    model: ModelOpt = None,
    image: Annotated[Path | None, typer.Option(help="the screenshot")] = None,
    prompt: Annotated[str | None, typer.Option(help='the instruction, e.g. "click the login button"')] = None,
    adapter: AdapterOpt = None,
    user: UserOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="PNG with the click drawn (default: ./<image>_click.png)")
    ] = None,
    max_new_tokens: int = 32,
):
    """Predict where to click on one screenshot: prints the answer and the point, draws it on a PNG."""
    from pigg.grounding.predict import predict_click

    if model is None or image is None or prompt is None:
        raise PiggError("pigg predict needs --model, --image and --prompt")
    result = predict_click(model, image, prompt, adapter, user, out, max_new_tokens)
    print(f"answer: {result.click.raw!r}")
    if result.click.point is None:
        print("click: none (the answer holds no point or box)")
    else:
        x, y = result.click.point
        print(f"click: ({x:.1f}, {y:.1f}) px on a {result.click.size[0]}x{result.click.size[1]} screenshot")
    print(result.png)


@app.command("eval")
def evaluate(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    user: UserOpt = None,
    compare: Annotated[
        str | None, typer.Option(help="comma-separated models on the same samples; 'base' is the runs' base")
    ] = None,
    data: EvalDataOpt = None,
    users: EvalUsersOpt = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: RUN/eval)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="screens per generation batch")] = None,
    radius: Annotated[
        float | None, typer.Option(help="hit radius as a fraction of the diagonal (no box)")
    ] = None,
    max_new_tokens: int | None = None,
    max_samples: int | None = None,
    loss: Annotated[bool, typer.Option("--loss", help="also compute evaluation loss")] = False,
    mode: Annotated[
        str,
        typer.Option(
            help="classification runs: generate (answers read strictly), likelihood (the most likely "
            "label, no generation) or both"
        ),
    ] = "generate",
    metric: Annotated[
        str,
        typer.Option(
            help="click (grounding), or similarity for free-text answers: seed 003's embedding distance, "
            "exact match and token F1"
        ),
    ] = "click",
    embed_with: Annotated[
        str, typer.Option(help="--metric similarity: self (each model, as seed 003), base, or a model folder")
    ] = "self",
):
    """Click accuracy of a model, or of several side by side (--compare base,RUN), with a report; for a
    classification run (task: classify) accuracy, macro-F1, per-class scores, confusion PNG, throughput."""
    if mode not in ("generate", "likelihood", "both"):
        raise PiggError(f"--mode {mode!r}: use generate, likelihood or both")
    if metric not in ("click", "similarity"):
        raise PiggError(f"--metric {metric!r}: use click or similarity")
    from pigg.grounding.evaluate import run_eval

    specs = [s.strip() for s in compare.split(",")] if compare else []
    if model is not None:
        specs.insert(0, model)
    if not specs:
        raise PiggError("pigg eval needs --model or --compare")
    path = run_eval(
        specs,
        adapter=adapter,
        user=user,
        data=data,
        users=users,
        out=out,
        max_samples=max_samples,
        batch_size=batch_size,
        radius=radius,
        max_new_tokens=max_new_tokens,
        loss=loss,
        mode=mode,
        metric=metric,
        embed_with=embed_with,
    )
    print(path)


@app.command()
def personalize(
    run: Annotated[Path, typer.Argument(help="the global run folder (LoRA or full)")],
    overrides: Overrides = None,
    budgets: Annotated[
        str | None,
        typer.Option(
            help="data-efficiency curve: also train each user on this many own samples, e.g. 5,10,20"
        ),
    ] = None,
):
    """Train, save and evaluate one LoRA adapter per user on top of a global run (RUN/users/<id>/): accuracy
    per kind, forgetting flags, cost per user, and with --budgets the data-efficiency curve."""
    from pigg.grounding.personalize import personalize as run_personalize

    extra = []
    if budgets:
        try:
            extra = [f"personalize.budgets=[{','.join(str(int(b)) for b in budgets.split(','))}]"]
        except ValueError:
            raise PiggError(f"--budgets {budgets!r}: write sample counts like 5,10,20") from None
    print(run_personalize(run, [*(overrides or []), *extra]))


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="the global run folder (its users' adapters in RUN/users/)")],
    host: Annotated[
        str, typer.Option(help="address to bind; off loopback an API key is required")
    ] = "127.0.0.1",
    port: int = 8000,
    max_batch: Annotated[int, typer.Option(help="requests generated together at most")] = 16,
    max_wait_ms: Annotated[
        float, typer.Option(help="how long a request waits for others to batch with")
    ] = 10.0,
    adapters_in_memory: Annotated[
        int, typer.Option(help="user adapters kept loaded (least recently used out)")
    ] = 8,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="PIGG_API_KEY", help="require Authorization: Bearer KEY (env PIGG_API_KEY)"),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="answer length; a request may ask for up to 8x")] = 32,
    max_pixels: Annotated[int, typer.Option(help="largest screenshot accepted, in pixels")] = 4096 * 4096,
    max_image_mb: Annotated[float, typer.Option(help="largest screenshot accepted, in MiB")] = 16.0,
    max_images: Annotated[int, typer.Option(help="screenshots in one chat request at most")] = 4,
    engine: Annotated[
        str, typer.Option(help="pigg (transformers + peft, CPU or GPU) or vllm (GPU)")
    ] = "pigg",
    merged: Annotated[
        Path | None, typer.Option(help="--engine vllm on a LoRA run: its merged model (`pigg merge`)")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="--engine vllm: print the vLLM command, run nothing")] = False,
    batching: Annotated[
        str, typer.Option(help="mixed: users' requests share a batch (peft adapter_names); per-adapter")
    ] = "mixed",
):
    """Serve the global agent and every user's adapter over HTTP: POST /v1/click, the OpenAI-compatible
    POST /v1/chat/completions, GET /health, and a page at / that draws the click."""
    from pigg.serve.server import check_exposure, run_vllm, vllm_command

    if engine == "vllm":
        check_exposure(host, api_key)
        command = vllm_command(run, host, port, merged, adapters_in_memory)
        print(" ".join(command), flush=True)
        if not dry_run:
            run_vllm(command, api_key)
        return
    if engine != "pigg":
        raise PiggError(f"--engine {engine}: pigg or vllm")
    from pigg.extras import require

    require("serve", "pigg serve")
    from pigg.serve.app import ServeSettings
    from pigg.serve.server import serve as run_server

    settings = ServeSettings(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_pixels=max_pixels,
        max_image_bytes=int(max_image_mb * 2**20),
        max_images=max_images,
        max_new_tokens=max_new_tokens,
        api_key=api_key,
    )
    if batching not in ("mixed", "per-adapter"):
        raise PiggError(f"--batching {batching}: mixed or per-adapter")
    run_server(run, host, port, settings, adapters_in_memory, mixed=batching == "mixed")


@app.command("bench-serve")
def bench_serve(
    run: Annotated[Path, typer.Argument(help="the global run folder to serve")],
    requests: Annotated[int, typer.Option(help="requests in each phase")] = 200,
    concurrency: Annotated[int, typer.Option(help="clients sending at once in the batched phase")] = 16,
    users: Annotated[
        str | None, typer.Option(help="agents to ask in turn, e.g. global,1,2 (default: all)")
    ] = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    out: Annotated[Path | None, typer.Option(help="results JSON (default: RUN/serve_bench.json)")] = None,
):
    """Load-test `pigg serve` on localhost: the same requests one at a time (max batch 1, one client),
    then from concurrent clients to a server batching per adapter and to one mixing users in a batch;
    every batched answer must equal its one-at-a-time answer. Reports requests/s, p50/p95 latency and
    batches of each."""
    from pigg.extras import require

    require("serve", "pigg bench-serve")
    from pigg.serve.bench import run_bench

    agents = [u.strip() for u in users.split(",")] if users else None
    print(run_bench(run, requests, concurrency, agents, max_batch, max_wait_ms, out))


@app.command()
def demo(
    kind: Annotated[
        str, typer.Argument(help="grounding (GUI clicks, the default) or text (seed 004's classification)")
    ] = "grounding",
    out: Annotated[Path | None, typer.Option(help="folder for the demo's data, model, runs and logs")] = None,
    users: Annotated[int, typer.Option(help="grounding: synthetic users")] = 12,
    per_user: Annotated[int, typer.Option(help="grounding: screens per training user")] = 80,
    articles: Annotated[int, typer.Option(help="text: training articles (a sixth as many held out)")] = 2400,
    steps: Annotated[
        int | None, typer.Option(help="training steps of the global / text run (default: the recipe's)")
    ] = None,
):
    """The embedded demos. grounding: synthetic users, a tiny Qwen3-VL, global training, evaluation,
    personalization. text: synthetic news, a tiny Qwen2.5, full fine-tuning, base vs tuned classification."""
    from pigg.demo import run_demo, run_text_demo

    overrides = [f"train.max_steps={steps}"] if steps else []
    if kind == "text":
        print(run_text_demo(out or Path("demo_text_out"), articles, max(40, articles // 6), overrides))
    elif kind == "grounding":
        print(run_demo(out or Path("demo_out"), users=users, per_user=per_user, overrides=overrides))
    else:
        raise PiggError(f"pigg demo {kind}: there are two demos, grounding and text")


def _resume_path_option(argv: list[str]) -> list[str]:
    """`--resume PATH` (an existing folder) means `--resume-from PATH`; a bare `--resume` stays a flag."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--resume" and Path(out[i + 1]).is_dir():
            out[i] = "--resume-from"
    return out


REPORT_TO = "https://github.com/pigg-project/pigg/issues"


def main() -> None:
    # transformers' own Trainer still calls its deprecated name: noise in every run's log
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = sys.argv[1:]
    debug = "--debug" in args or os.environ.get("PIGG_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    from pigg.train.launch import interrupt_once_under_torchrun

    interrupt_once_under_torchrun()
    try:
        app(args=_resume_path_option(args))
    except PiggError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if debug:
            raise
        where = getattr(exc, "pigg_input", None)
        print(
            f"error: unexpected {type(exc).__name__}: {str(exc)[:500]}"
            + (f"\n  while reading {where}" if where else "")
            + f"\n  This is a bug in pigg: please report it at {REPORT_TO} with the command; run it again"
            " with --debug (or PIGG_DEBUG=1) for the traceback.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
