"""Measuring a stretch of training: step and save times from Trainer events, and peak memory.

Peak memory is CUDA's max allocated and reserved on a GPU; on CPU the process's resident set, sampled
every 20 ms, because the kernel's own high-water mark (ru_maxrss) never goes back down between the
configurations one process measures in turn.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from transformers import TrainerCallback

# Dense bf16 peak of the GPUs pigg reports MFU for (no sparsity), FLOP/s; the first name the device's
# name contains wins, so the PCIe and NVL H100s come before the SXM one.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Peak:
    bytes: int  # RSS on CPU, max allocated on CUDA
    reserved: int | None = None  # CUDA only
    kind: str = "rss"


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.result`."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.result: Peak | None = None
        self._max = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._max = max(self._max, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._max = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.result = Peak(torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(), "cuda")
        else:
            self._stop.set()
            self._thread.join()
            self.result = Peak(max(self._max, _rss_bytes()))


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step and of each save (everything between a step's end and its save,
    evaluation included), synchronized with CUDA so the numbers are the device's."""

    def __init__(self):
        self.steps: list[float] = []
        self.saves: list[float] = []
        self._last = 0.0

    def _now(self) -> float:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        now = self._now()
        self.steps.append(now - self._last)
        self._last = now

    def on_save(self, args, state, control, **kwargs):
        now = self._now()
        self.saves.append(now - self._last)
        self._last = now


def machine_report() -> tuple[dict, dict]:
    """(machine, versions) for a benchmark report: platform, CPU threads, GPU name and its dense bf16
    peak where known; torch, transformers and peft versions."""
    import platform

    import peft
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None) if gpu else None
    machine = {
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": gpu,
        "gpu_peak_bf16_flops": peak,
    }
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    return machine, versions


def machine_line(report: dict) -> str:
    """The first line of a benchmark table: where it was measured, with what."""
    machine = report["machine"]
    return (
        f"machine: {machine['platform']}, {machine['gpu'] or 'CPU'} ({machine['cpu_threads']} threads); "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    )


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return (ordered[n // 2] + ordered[(n - 1) // 2]) / 2 if n else float("nan")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
