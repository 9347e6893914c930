"""`pigg train` and what goes with a training run: plan, params, compare, bench, sbatch, merge, push."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from pigg.cli.apps import (
    ConfigArg,
    Overrides,
    UserOpt,
    app,
)
from pigg.errors import PiggError


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
    from pigg.train.build import select_gpus

    select_gpus(gpus)
    from pigg.config import load_config
    from pigg.train.build import end_process_group
    from pigg.train.control import EXIT_RESUMABLE
    from pigg.train.launch import Topology, launch
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
    from pigg.train.build import select_gpus

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
    from pigg.train.build import select_gpus

    select_gpus(gpus)
    from pigg.train.bench import bench as run_bench

    chosen = [p.strip() for p in paths.split(",")] if paths else None
    path = run_bench(
        config, overrides, chosen, steps, warmup, repeat, out, progress=lambda m: print(m, file=sys.stderr)
    )
    print(path.with_name("bench.md").read_text())
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
