"""`pigg sbatch`: a SLURM batch script that runs a recipe to completion across as many jobs as it takes.

Each job starts with `--resume` (a fresh start when there is no checkpoint yet) and `--time-limit` equal
to the job's time, so pigg saves before the limit from its own measured step and save times. SLURM also
sends SIGUSR1 a few minutes before the end; the script passes it to pigg (through srun on several nodes),
whose launcher hands it to every training process; they save at the same step and the job exits with
code 75. A job that stopped that way requeues itself.

Several GPUs run `pigg train --nproc G` (torchrun underneath); several nodes run one pigg launcher per node
under srun, meeting at the first node of the allocation.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pigg.config import load_config, parse_duration
from pigg.train.control import EXIT_RESUMABLE
from pigg.train.run import RUN_SUMMARY


def _slurm_time(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def sbatch_script(
    config: str | Path,
    overrides: list[str] | None = None,
    gpus: int = 1,
    time: str | None = None,
    nodes: int = 1,
    signal_before: int = 300,
    partition: str | None = None,
    account: str | None = None,
    cpus_per_gpu: int = 8,
    memory: str | None = None,
    workdir: str | Path | None = None,
    venv: str | Path | None = ".venv",
) -> str:
    """The script text. `time` defaults to the config's train.time_limit, else 8 hours (seed 001's limit)."""
    cfg = load_config(config, overrides)  # fails here, not in the queue, on a bad config
    seconds = parse_duration(time or cfg.train.time_limit or "8h")
    if gpus < 1 or nodes < 1:
        raise ValueError("--gpus and --nodes must be at least 1")
    if not 0 < signal_before < seconds:
        raise ValueError(f"--signal-before {signal_before}s must be shorter than the job ({int(seconds)}s)")
    workdir = Path(workdir or Path.cwd()).resolve()
    run_dir = Path(cfg.train.output_dir)
    args = [str(config), *(overrides or []), "--resume", "--time-limit", str(int(seconds))]
    launch = "pigg train " + shlex.join(args) + (f" --nproc {gpus}" if gpus > 1 else "")
    head = ""
    if nodes > 1:
        # one launcher per node; $SLURM_NODEID is expanded on each node, so it is single-quoted here
        head = 'export HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        node = f" --nnodes {nodes} --node-rank $SLURM_NODEID --master-addr $HEAD --master-port 29500"
        launch = f"srun --ntasks-per-node=1 bash -c {shlex.quote('exec ' + launch + node)}"
    directives = [
        f"--job-name={cfg.name}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={gpus}",
        f"--cpus-per-task={cpus_per_gpu * gpus}",
        f"--time={_slurm_time(seconds)}",
        f"--signal=B:USR1@{signal_before}",
        "--requeue",
        "--open-mode=append",
        f"--output={cfg.train.log_dir}/slurm_%x_%j.out",
        *([f"--mem={memory}"] if memory else []),
        *([f"--partition={partition}"] if partition else []),
        *([f"--account={account}"] if account else []),
    ]
    activate = (
        f"[ -f {shlex.quote(str(venv))}/bin/activate ] && . {shlex.quote(str(venv))}/bin/activate\n"
        if venv
        else ""
    )
    summary = shlex.quote(str(run_dir / RUN_SUMMARY))
    return f"""#!/bin/bash
# Written by `pigg sbatch` for run '{cfg.name}' ({cfg.train.output_dir}). Submit with: sbatch THIS_FILE
{chr(10).join("#SBATCH " + d for d in directives)}
set -u
cd {shlex.quote(str(workdir))}
mkdir -p {shlex.quote(cfg.train.log_dir)}
{activate}echo "job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname) at $(date)"

{head}{launch} &
PID=$!
# SLURM signals this shell {signal_before}s before the limit; pass it on so pigg saves and stops.
trap 'echo "SIGUSR1 from SLURM: asking pigg to save and stop"; kill -USR1 "$PID"' USR1
wait "$PID"; rc=$?
while kill -0 "$PID" 2>/dev/null; do wait "$PID"; rc=$?; done  # wait again after the trap

if [ "$rc" -eq {EXIT_RESUMABLE} ] || grep -qs '"status": "stopped"' {summary}; then
    echo "stopped with a checkpoint: requeueing job $SLURM_JOB_ID to resume"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$rc"
"""
