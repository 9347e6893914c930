"""`pigg plan`: measure a few training steps per configuration and compute what the whole run costs.

Seed 001 re-planned a job that hit its 8-hour limit by guessing (rank 64 vs 32, batch 2x4 vs 4x2, 2.5
epochs vs 1). Here every guess is a row: the real model, the real data, a few warm-up steps, then the
measured step time, one real checkpoint save, and the whole run's time against `train.time_limit`.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pigg.config import ExperimentConfig, load_config
from pigg.errors import ConfigError
from pigg.train.build import timed_run
from pigg.train.control import clock
from pigg.train.measure import PeakMemory, human_bytes, median


def expand_tries(tries: list[str]) -> list[list[str]]:
    """["lora.r=16,32", "train.batch_size=2,4"] → one override list per combination (4 here).

    Keys joined by "+" vary together: "train.batch_size+train.grad_accum=2+4,4+2" is two rows, 2x4 and
    4x2, the same effective batch.
    """
    axes = []
    for item in tries:
        key, sep, values = item.partition("=")
        keys = [k.strip() for k in key.split("+")]
        if not sep or not all(keys) or not values.strip():
            raise ConfigError(f"--try {item!r}: write section.key=value1,value2,... or key1+key2=a+b,c+d")
        axis = []
        for value in (v.strip() for v in values.split(",") if v.strip()):
            parts = value.split("+") if len(keys) > 1 else [value]
            if len(parts) != len(keys):
                raise ConfigError(f"--try {item!r}: {value!r} needs {len(keys)} values joined by '+'")
            axis.append(" ".join(f"{k}={v.strip()}" for k, v in zip(keys, parts, strict=True)))
        axes.append(axis)
    return [" ".join(combo).split() for combo in itertools.product(*axes)] if axes else [[]]


@dataclass
class PlanRow:
    tried: str  # the overrides of this row ("" for the config as written)
    samples: int
    steps: int  # optimizer steps of the whole run
    samples_per_step: int
    text_tokens: int  # one epoch of the training data
    image_tokens: int
    startup_seconds: float  # data check and model load
    step_seconds: float  # median of the measured steps
    step_min: float
    step_max: float
    save_seconds: float
    saves: int
    total_seconds: float  # startup + steps + saves
    peak_memory: int
    peak_memory_kind: str
    checkpoint_bytes: int
    time_limit: float | None
    fits: bool | None

    def cells(self) -> list[str]:
        fits = "-" if self.fits is None else ("yes" if self.fits else "no")
        return [
            self.tried or "(as written)",
            str(self.samples),
            f"{self.steps} x {self.samples_per_step}",
            f"{self.text_tokens:,} / {self.image_tokens:,}",
            f"{self.step_seconds:.2f} ({self.step_min:.2f}-{self.step_max:.2f})",
            f"{self.samples_per_step / self.step_seconds:.1f}",
            clock(self.total_seconds),
            human_bytes(self.peak_memory),
            human_bytes(self.checkpoint_bytes),
            fits,
        ]


HEADER = [
    "tried",
    "samples",
    "steps x samples",
    "tokens text / image",
    "step s (min-max)",
    "samples/s",
    "total",
    "peak memory",
    "checkpoint",
    "fits limit",
]


def run_steps(samples: int, cfg: ExperimentConfig, world_size: int) -> int:
    """Optimizer steps of the whole run, as HF Trainer counts them."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    batches = math.ceil(samples / (cfg.train.batch_size * world_size))
    per_epoch = max(batches // cfg.train.grad_accum, 1)
    return math.ceil(cfg.train.epochs * per_epoch)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(
    cfg: ExperimentConfig, tried: str, warmup: int, steps: int, data_cache: dict | None = None
) -> PlanRow:
    """Train `warmup + steps` steps of `cfg` into a scratch folder, saving a checkpoint after the last.
    Checked data is reused from `data_cache` while the model and data sections stay the same."""
    import torch

    from pigg.train.build import prepare_data

    started = time.perf_counter()
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    scratch = Path(tempfile.mkdtemp(prefix="pigg_plan_"))
    try:
        key = json.dumps([cfg.model.model_dump(), cfg.data.model_dump(), cfg.train.eval])
        cache = {} if data_cache is None else data_cache
        data = cache[key] if key in cache else cache.setdefault(key, prepare_data(cfg, scratch))
        total = warmup + steps
        model, trainer, timer = timed_run(
            cfg,
            data,
            scratch,
            max_steps=total,
            save_steps=total,
            save_total_limit=1,
            eval_strategy="no",
            logging_steps=total,
        )
        startup = time.perf_counter() - started
        with PeakMemory() as peak:
            trainer.train()
        checkpoint = _folder_bytes(scratch / f"checkpoint-{total}")
        del model, trainer
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    measured = timer.steps[warmup:] or timer.steps
    run_total = run_steps(len(data.train), cfg, world_size)
    saves = run_total // cfg.train.save_steps + 1  # periodic checkpoints and the final model
    save = timer.saves[-1] if timer.saves else 0.0
    step = median(measured)
    total_seconds = startup + run_total * step + saves * save
    limit = cfg.train.time_limit_seconds
    text_tokens = sum(t for t, _ in data.tokens())
    image_tokens = sum(i for _, i in data.tokens())
    return PlanRow(
        tried=tried,
        samples=len(data.train),
        steps=run_total,
        samples_per_step=cfg.train.batch_size * cfg.train.grad_accum * world_size,
        text_tokens=text_tokens,
        image_tokens=image_tokens,
        startup_seconds=round(startup, 2),
        step_seconds=round(step, 4),
        step_min=round(min(measured), 4),
        step_max=round(max(measured), 4),
        save_seconds=round(save, 3),
        saves=saves,
        total_seconds=round(total_seconds, 1),
        peak_memory=peak.result.bytes,
        peak_memory_kind=peak.result.kind,
        checkpoint_bytes=checkpoint,
        time_limit=limit,
        fits=None if limit is None else total_seconds <= limit,
    )


def plan(
    config: str | Path,
    overrides: list[str] | None = None,
    tries: list[str] | None = None,
    warmup: int = 2,
    steps: int = 3,
    progress=print,
) -> list[PlanRow]:
    """One measured row per combination of `tries` on top of the config and its overrides."""
    if warmup < 0 or steps < 1:
        raise ConfigError("--warmup must be >= 0 and --steps >= 1")
    combos = expand_tries(tries or [])
    configs = [(" ".join(c), load_config(config, [*(overrides or []), *c])) for c in combos]  # fail early
    rows = []
    cache: dict = {}
    for k, (tried, cfg) in enumerate(configs, 1):
        progress(
            f"[{k}/{len(configs)}] {tried or 'config as written'}: {warmup} warm-up + {steps} measured steps"
        )
        rows.append(measure(cfg, tried, warmup, steps, cache))
    return rows


def markdown(rows: list[PlanRow]) -> str:
    limit = next((r.time_limit for r in rows if r.time_limit), None)
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
        *("| " + " | ".join(row.cells()) + " |" for row in rows),
    ]
    kind = rows[0].peak_memory_kind if rows else "rss"
    notes = [
        "",
        f"steps: optimizer steps of the whole run x samples per step; tokens: one epoch; "
        f"total: startup + steps x median step + saves; peak memory: {'CUDA max allocated' if kind == 'cuda' else 'process RSS'}"
        + (f"; limit: {clock(limit)}" if limit else ""),
    ]
    return "\n".join(lines + notes)


def to_json(rows: list[PlanRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
