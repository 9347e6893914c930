"""One process vs several under torchrun, side by side in one run: samples/s, peak RSS per process, losses.

    python benchmarks/ranks_cpu.py CONFIG [--ranks 1,2] [--steps 40] [--out bench_ranks]

Each run trains CONFIG for --steps optimizer steps at the same effective batch (train.batch_size is the
effective batch: 1 rank takes all of it, N ranks 1/N each), through `pigg train --nproc N`. samples/s is
the median of the logged per-step throughput after the first quarter of the steps; RSS is sampled every
50 ms over each training process (not the launcher, torchrun's agent or dataloader workers).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml


def run(config: Path, ranks: int, steps: int, batch: int, scratch: Path) -> dict:
    out_dir = scratch / f"ranks{ranks}"
    overrides = [
        f"train.batch_size={batch // ranks}",
        "train.grad_accum=1",
        f"train.max_steps={steps}",
        "train.logging_steps=1",
        f"train.save_steps={steps * 10}",
        f"train.output_dir={out_dir}",
        f"train.log_dir={scratch / 'logs'}",
        "train.report_to=[]",
    ]
    command = [sys.executable, "-m", "pigg", "train", str(config), *overrides, "--nproc", str(ranks)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak: dict[int, int] = {}
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            # the training processes: this one alone, or the children of torchrun's agent (not their
            # dataloader workers, which are started anew every epoch)
            trainers = [root] if ranks == 1 else [p for agent in root.children() for p in agent.children()]
            for proc in trainers:
                peak[proc.pid] = max(peak.get(proc.pid, 0), proc.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    lines = process.stdout.read().splitlines()
    if process.returncode != 0:
        raise SystemExit("\n".join(lines[-30:]))
    rates = [float(m.group(1)) for line in lines if (m := re.search(r"\| ([\d.]+) samples/s", line))]
    summary = json.loads((out_dir / "pigg_run.json").read_text())
    return {
        "ranks": ranks,
        "micro_batch_per_rank": batch // ranks,
        "samples_per_second": round(statistics.median(rates[steps // 4 :]), 2),
        "peak_rss_mb_per_training_process": [round(r / 2**20) for r in sorted(peak.values())],
        "first_loss": summary["losses"][0][1],
        "last_loss": summary["losses"][-1][1],
        "job_seconds": summary["train_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("bench_ranks"))
    args = parser.parse_args()
    batch = yaml.safe_load(args.config.read_text())["train"]["batch_size"]
    with tempfile.TemporaryDirectory() as scratch:
        rows = [run(args.config, int(n), args.steps, batch, Path(scratch)) for n in args.ranks.split(",")]
    base = rows[0]["samples_per_second"]
    lines = [
        f"{args.config}: effective batch {batch}, {args.steps} steps, {psutil.cpu_count()} CPU threads",
        "",
        "| processes | micro-batch each | samples/s | x 1 process | peak RSS per training process | "
        "loss first -> last |",
        "|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ranks']} | {r['micro_batch_per_rank']} | {r['samples_per_second']} | "
            f"{r['samples_per_second'] / base:.2f} | {', '.join(f'{m} MB' for m in r['peak_rss_mb_per_training_process'])} | "
            f"{r['first_loss']:.4f} -> {r['last_loss']:.4f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ranks.json").write_text(json.dumps(rows, indent=2))
    (args.out / "ranks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(args.out / "ranks.json")


if __name__ == "__main__":
    main()
