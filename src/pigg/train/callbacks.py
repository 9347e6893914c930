"""The run's log file (stdout and stderr teed), and progress lines with throughput and ETA."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback

from pigg.train.control import clock


class _Tee:
    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def tee_output(path: Path) -> Iterator[Path]:
    """Copy everything printed to stdout and stderr into `path` as well (seed 000's TeeLogger)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", buffering=1) as log:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(old_out, log), _Tee(old_err, log)
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = old_out, old_err


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Drop what a process other than the first prints (it would repeat rank 0's lines); errors and
    warnings on stderr still show."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


class ProgressCallback(TrainerCallback):
    """One line per logging step: loss, lr, grad norm, samples/s and tokens/s (non-padding) over the last
    logging interval (PiggTrainer puts them in the logs, so TensorBoard has the same numbers), elapsed
    time and ETA; one line per evaluation with the eval loss.

    Lines rather than a redrawn bar, because the same text goes to the log file.
    """

    def __init__(self, samples_per_step: int):
        self.samples_per_step = samples_per_step
        self.start = 0.0
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.start_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if "eval_loss" in logs:
            print(
                f"step {state.global_step}/{state.max_steps} | eval_loss {logs['eval_loss']:.4f}", flush=True
            )
        if "loss" not in logs or state.global_step == self.start_step:
            return
        elapsed = time.perf_counter() - self.start
        per_step = elapsed / (state.global_step - self.start_step)
        remaining = (state.max_steps - state.global_step) * per_step
        samples_s = logs.get("samples_per_second", self.samples_per_step / per_step)
        tokens_s = logs.get("tokens_per_second")
        print(
            f"step {state.global_step}/{state.max_steps} | loss {logs['loss']:.4f} | "
            f"lr {logs.get('learning_rate', 0):.2e} | grad_norm {logs.get('grad_norm', float('nan')):.3f} | "
            + (
                f"reward {logs['reward']:.3f} (std {logs.get('reward_std', 0):.3f}) | "
                if "reward" in logs
                else ""
            )
            + (f"generating {100 * logs['generation_share']:.0f}% | " if "generation_share" in logs else "")
            + f"{samples_s:.2f} samples/s | "
            + (f"{tokens_s:.0f} tokens/s | " if tokens_s is not None else "")
            + (f"pad {100 * logs['padding_fraction']:.1f}% " if "padding_fraction" in logs else "")
            + (
                f"(unpacked {100 * logs['padding_fraction_unpacked']:.1f}%) "
                if "padding_fraction_unpacked" in logs
                else ""
            )
            + ("| " if "padding_fraction" in logs else "")
            + f"{clock(elapsed)} elapsed, ETA {clock(remaining)}",
            flush=True,
        )
