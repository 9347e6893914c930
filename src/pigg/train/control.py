"""Run control: checkpoints that are complete or absent, resume from the latest complete one, and a clean
stop (checkpoint saved, distinct exit code) before a time limit or on a scheduler's signal.

A checkpoint is written into `RUN/.partial/checkpoint-N` and renamed to `RUN/checkpoint-N` only once the
Trainer has written everything (trainer_state.json comes last), so `checkpoint-N` never names a half-written
folder, whatever moment a job is killed at.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

from pigg.errors import ConfigError
from pigg.train.measure import StepTimer, median

# sysexits' EX_TEMPFAIL: "try again later", the exit code of a run that stopped to be resumed.
EXIT_RESUMABLE = 75
STAGING = ".partial"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")
# When the job started (epoch seconds), set by `pigg train --nproc` for its processes and by a `pigg sbatch`
# script: train.time_limit counts from it, so the launch and the queue's start-up count too.
JOB_STARTED = "PIGG_JOB_STARTED"


def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------- checkpoints


def is_complete(folder: Path) -> bool:
    """A checkpoint the Trainer finished: trainer_state.json (its last file) and the weights, whichever way
    they were saved (safetensors, an adapter, FSDP shards, a DeepSpeed step folder)."""
    weights = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
    sharded = any(folder.glob("pytorch_model_fsdp*")) or any(folder.glob("global_step*"))
    return (folder / "trainer_state.json").is_file() and (
        sharded or any((folder / w).exists() for w in weights)
    )


def checkpoints(run_dir: Path) -> list[Path]:
    """`checkpoint-N` folders of a run, newest (highest N) first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)), reverse=True)


def latest_complete(run_dir: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones and leftovers of a killed save are skipped with a
    warning (and left on disk for inspection)."""
    for leftover in sorted((run_dir / STAGING).glob("checkpoint-*")):
        print(
            f"warning: skipping {leftover}: a save that never finished (the job stopped while writing it)",
            flush=True,
        )
    for folder in checkpoints(run_dir):
        if is_complete(folder):
            return folder
        print(
            f"warning: skipping {folder}: incomplete checkpoint (no trainer_state.json or weights)",
            flush=True,
        )
    return None


def resume_point(run_dir: Path, resume: str | bool | None) -> Path | None:
    """What `--resume` means: None/False start fresh; True the run's latest complete checkpoint (or fresh when
    there is none yet, as for a job requeued before its first save); a path that exact checkpoint."""
    if not resume:
        return None
    if resume is True or resume == "latest":
        found = latest_complete(run_dir)
        if found is None:
            print(f"resume: no complete checkpoint in {run_dir} yet; starting from the beginning")
        return found
    folder = Path(resume)
    if not folder.is_dir():
        raise ConfigError(f"--resume {folder}: no such checkpoint folder")
    if not is_complete(folder):
        raise ConfigError(f"--resume {folder}: incomplete checkpoint (no trainer_state.json or weights)")
    return folder


# ---------------------------------------------------------------- stopping early


# Stop signals that arrived before training began (while the model loaded): SLURM's warning may come that
# early in a short job, and a signal's default action would kill the process without a word.
_early: list[str] = []


def catch_stop_signals_early() -> None:
    """From the start of `pigg train`: a stop signal is remembered, and the run stops after its first step
    (RunControl takes it over), instead of killing the process before anything is saved."""
    if threading.current_thread() is not threading.main_thread():
        return

    def remember(number, frame):
        _early.append(signal.Signals(number).name)
        print(f"received {_early[-1]} while starting: the run stops after its first step", flush=True)

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), remember)


class RunControl(StepTimer):
    """Asks the Trainer to save and stop when a stop signal arrived or the time limit is near.

    The time limit counts from `started` (the job's start). A stop is due after a step when one more step,
    a save and a margin would no longer fit: the step time is the median of the last 50 steps, the save
    time the longest save measured (or, before the first, an estimate from the checkpoint's size).
    """

    def __init__(self, time_limit: float | None, started: float, checkpoint_bytes: int):
        super().__init__()
        self.time_limit = time_limit
        self.started = started
        self.save_estimate = 2.0 + checkpoint_bytes / 200e6  # a conservative 200 MB/s until measured
        self.signal_name: str | None = None
        self.reason: str | None = None
        self._previous_handlers: dict[int, object] = {}

    # signals ---------------------------------------------------------
    def _on_signal(self, number, frame) -> None:
        self.signal_name = signal.Signals(number).name
        print(f"received {self.signal_name}: saving a checkpoint after this step, then stopping", flush=True)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for name in STOP_SIGNALS:
            number = getattr(signal, name)
            self._previous_handlers[number] = signal.signal(number, self._on_signal)
        if _early and self.signal_name is None:
            self.signal_name = _early[-1]

    def uninstall(self) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers.clear()

    # the decision -----------------------------------------------------
    def needed_before_limit(self) -> float:
        """Seconds that must remain for one more step and a save, plus a margin (2%, at most 2 minutes)."""
        step = median(self.steps[-50:]) if self.steps else 0.0
        save = max(self.saves) if self.saves else self.save_estimate
        return step + save + min(120.0, 0.02 * (self.time_limit or 0))

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.signal_name and not self.reason:
            self.reason = f"{self.signal_name} received"
        elif self.time_limit and not self.reason:
            elapsed = time.time() - self.started
            if self.time_limit - elapsed < self.needed_before_limit():
                self.reason = f"time limit {clock(self.time_limit)} near ({clock(elapsed)} elapsed)"
        if _any_rank(self.reason is not None, args.device) and not self.reason:
            self.reason = "another process was asked to stop"
        if self.reason and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
        return control


def _any_rank(flag: bool, device) -> bool:
    """True when `flag` is set on any process: under DDP/FSDP every rank must stop at the same step, or
    the ones still training wait forever for the others."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
