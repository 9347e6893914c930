"""`pigg sbatch`: a SLURM batch script that runs a recipe to completion across as many jobs as it takes.

Each job starts with `--resume` (a fresh start when there is no checkpoint yet) and `--time-limit` equal
to the job's time, counted from the job's start, so pigg saves before the limit from its own measured step
and save times. SLURM also sends SIGUSR1 `--signal-before` seconds before the end; the script passes it
to pigg (through srun on several nodes), whose launcher hands it to every training process; they save at
the same step and pigg exits with code 75.

The script requeues itself only after a stop that this job's pigg wrote: exit code 75 *and* the run
summary naming this job and restart (`job_attempt`), so a summary left by an earlier job never requeues
a start that failed. A SIGTERM (the time limit, `scancel`, preemption) also makes pigg save; the script
requeues after it only when the job's time is up, so `scancel` still ends the job (measured on SLURM
22.05: a requeue from the TERM trap of a cancelled job succeeds and would make it uncancellable).

Several GPUs run `pigg train --nproc G` (torchrun underneath); several nodes run one pigg launcher per node
under srun, meeting at the first node of the allocation.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time as clock
from pathlib import Path

from pigg.config import load_config, parse_duration
from pigg.train.build import ATTEMPT_ENV, ATTEMPT_KEY, RUN_SUMMARY
from pigg.train.control import EXIT_RESUMABLE, JOB_STARTED

DEFAULT_CPUS_PER_GPU = 8
# a TERM this close to the job's time limit (or later) is SLURM's time limit, not scancel or preemption
TIME_UP_MARGIN = 10

_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def slurm_duration(text: str) -> float:
    """Seconds from a job time written as SLURM's --time reads it, or with pigg's units.

    SLURM: "M" (a bare number is minutes), "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S". Units: "8h", "90m",
    "1h30m", "45s", "2d".
    """
    raw = str(text).strip()
    if raw.lower() in ("infinite", "unlimited"):
        raise ValueError(f"--time {raw}: a job without a time limit needs no pigg sbatch; give its limit")
    found = _SLURM_TIME.fullmatch(raw)
    if not found:
        try:
            return parse_duration(raw)  # 8h, 90m, 1h30m
        except ValueError:
            raise ValueError(
                f"--time {raw!r}: write it as SLURM does (minutes, M:S, H:M:S, D-H, D-H:M, D-H:M:S) "
                "or with units (8h, 90m, 1h30m)"
            ) from None
    days, first, second, third = found.groups()
    numbers = [int(n) for n in (first, second, third) if n is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (numbers + [0, 0])[:3]
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:  # M or M:S
        hours, (minutes, seconds) = 0, (numbers + [0])[:2]
    total = int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"--time {raw!r} must be positive")
    return float(total)


def _slurm_time(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hms = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{hms}" if days else hms


def largest_node_cpus(partition: str | None = None) -> int | None:
    """CPUs of the partition's largest node, from `sinfo` where this machine has one (a login node), else
    None."""
    if shutil.which("sinfo") is None:
        return None
    command = ["sinfo", "--noheader", "--format=%c", *([f"--partition={partition}"] if partition else [])]
    try:
        printed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    counts = [int(n) for n in re.findall(r"\d+", printed)]
    return max(counts) if counts else None


def job_cpus(gpus: int, cpus: int | None, node_cpus: int | None) -> tuple[int, str | None]:
    """CPUs per node and, when the default was lowered to fit, why. The default is 8 per GPU (8 for a CPU
    job), at most what the partition's largest node has; an explicit `cpus` is taken as asked."""
    if cpus is not None:
        if cpus < 1:
            raise ValueError("--cpus must be at least 1")
        return cpus, None
    wanted = DEFAULT_CPUS_PER_GPU * max(gpus, 1)
    if node_cpus is not None and wanted > node_cpus:
        return (
            node_cpus,
            f"asking for {node_cpus} CPUs per node, all that the largest node has ({wanted} by default)",
        )
    return wanted, None


def sbatch_script(
    config: str | Path,
    overrides: list[str] | None = None,
    gpus: int = 1,
    time: str | None = None,
    nodes: int = 1,
    signal_before: int | None = None,
    partition: str | None = None,
    account: str | None = None,
    cpus: int | None = None,
    memory: str | None = None,
    workdir: str | Path | None = None,
    python: str | Path | None = None,
    node_cpus: int | None = None,
) -> str:
    """The script text. `signal_before`: seconds before the limit SLURM sends SIGUSR1 (default 300, or a
    tenth of a shorter job).

    `time`: the job's time as SLURM reads `--time` (a bare number is minutes); default the config's
    train.time_limit, else 8 hours (seed 001's limit). `gpus` per node, 0 for CPU nodes (no GRES asked).
    `cpus` per node (default: see job_cpus; `node_cpus` is the largest node's count, see
    largest_node_cpus). `python`: the interpreter that runs pigg in the job, by default this one (its
    environment, by absolute path). SLURM's own output file goes to train.log_dir, which must exist before
    submission: `pigg sbatch` creates it.
    """
    cfg = load_config(config, overrides)  # fails here, not in the queue, on a bad config
    seconds = slurm_duration(time) if time else parse_duration(cfg.train.time_limit or "8h")
    if gpus < 0 or nodes < 1:
        raise ValueError("--gpus must be 0 (CPU nodes) or more, --nodes at least 1")
    if signal_before is None:  # 5 minutes, or a tenth of a shorter job
        signal_before = max(1, min(300, int(seconds) // 10))
    if not 0 < signal_before < seconds:
        raise ValueError(f"--signal-before {signal_before}s must be shorter than the job ({int(seconds)}s)")
    cpus_per_node, _ = job_cpus(gpus, cpus, node_cpus)
    workdir = Path(workdir or Path.cwd()).absolute()
    python = Path(python or sys.executable).absolute()  # not resolved: a venv's python is a symlink
    slurm_logs = workdir / cfg.train.log_dir
    summary = shlex.quote(str(Path(cfg.train.output_dir) / RUN_SUMMARY))

    args = [str(config), *(overrides or []), "--resume", "--time-limit", str(int(seconds))]
    launch = '"$PIGG_PYTHON" -m pigg train ' + shlex.join(args) + (f" --nproc {gpus}" if gpus > 1 else "")
    head = ""
    if nodes > 1:
        # one launcher per node; $SLURM_NODEID is expanded on each node, so it is single-quoted here
        head = 'export HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        node = f" --nnodes {nodes} --node-rank $SLURM_NODEID --master-addr $HEAD --master-port 29500"
        launch = f"srun --ntasks-per-node=1 bash -c {shlex.quote('exec ' + launch + node)}"
    directives = [
        f"--job-name={cfg.name}",
        f"--chdir={workdir}",
        f"--output={slurm_logs}/slurm_%x_%j.out",
        "--open-mode=append",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        *([f"--gpus-per-node={gpus}"] if gpus else []),  # a CPU node rejects any GPU GRES request
        f"--cpus-per-task={cpus_per_node}",
        f"--time={_slurm_time(seconds)}",
        f"--signal=B:USR1@{signal_before}",
        "--requeue",
        *([f"--mem={memory}"] if memory else []),
        *([f"--partition={partition}"] if partition else []),
        *([f"--account={account}"] if account else []),
    ]
    written = clock.strftime("%Y-%m-%d %H:%M")
    return f"""#!/bin/bash
# Written by `pigg sbatch` on {written} for run '{cfg.name}' ({cfg.train.output_dir}). Submit: sbatch THIS_FILE
{chr(10).join("#SBATCH " + d for d in directives)}
set -u
JOB_START=$(date +%s)
export {JOB_STARTED}="$JOB_START"  # pigg's time limit counts from the job's start
# the environment that wrote this script, by absolute path (pigg sbatch --python to change it)
export PIGG_PYTHON={shlex.quote(str(python))}
export PATH={shlex.quote(str(python.parent))}:"$PATH"
# this start of the job: pigg writes it into {summary}, so a stop is never read from an older job's file
export {ATTEMPT_ENV}="$SLURM_JOB_ID.${{SLURM_RESTART_COUNT:-0}}"
echo "job $SLURM_JOB_ID (restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname) at $(date)"

{head}{launch} &
PID=$!
# SLURM signals this shell {signal_before}s before the limit; pass it on so pigg saves and stops.
trap 'echo "SIGUSR1 from SLURM: asking pigg to save and stop"; kill -USR1 "$PID"' USR1
# SIGTERM reaches every process of the job (time limit, scancel, preemption): pigg saves and stops on it.
# Only the time limit's TERM requeues: after scancel the job must end, and a preempting cluster requeues
# (or not) by its own PreemptMode.
TERM_SEEN=0
TIME_UP=0
trap 'TERM_SEEN=1; [ $(( $(date +%s) - JOB_START )) -ge {int(seconds) - TIME_UP_MARGIN} ] && TIME_UP=1
      echo "SIGTERM from SLURM ($([ $TIME_UP = 1 ] && echo "time limit" || echo "scancel or preemption")): pigg saves and stops"
      kill -TERM "$PID" 2>/dev/null' TERM
wait "$PID"; rc=$?
while kill -0 "$PID" 2>/dev/null; do wait "$PID"; rc=$?; done  # wait again after a trap

saved=0  # pigg of this very start wrote a stop with a checkpoint
if [ "$rc" -eq {EXIT_RESUMABLE} ] && grep -qsF "\\"{ATTEMPT_KEY}\\": \\"${ATTEMPT_ENV}\\"" {summary} \\
        && grep -qsF '"status": "stopped"' {summary}; then saved=1; fi
if [ "$saved" = 1 ] && {{ [ "$TERM_SEEN" = 0 ] || [ "$TIME_UP" = 1 ]; }}; then
    echo "pigg stopped with a checkpoint: requeueing job $SLURM_JOB_ID to resume"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
elif [ "$saved" = 1 ]; then
    echo "pigg saved a checkpoint; the job was cancelled, not requeued: submit this script again to resume"
elif [ "$rc" -eq {EXIT_RESUMABLE} ]; then
    echo "exit {EXIT_RESUMABLE}, but {summary} holds no stop of this job: not requeueing"
fi
exit "$rc"
"""
