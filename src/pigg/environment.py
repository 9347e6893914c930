"""`pigg --version` and `pigg env`: what a bug report needs to say about the installation it came from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import pigg

# the libraries pigg trains, evaluates and serves with, by distribution name, in the order people ask
LIBRARIES = (
    "transformers", "peft", "accelerate", "trl", "datasets", "tokenizers", "safetensors", "huggingface-hub",
    "bitsandbytes", "deepspeed", "flash-attn", "liger-kernel", "vllm", "fastapi", "uvicorn",
)  # fmt: skip
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit when pigg runs from one (an editable install), with `+modified` when
    tracked files differ from it; None for an installed wheel."""
    root = Path(pigg.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD"], timeout=10).returncode
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() + ("+modified" if dirty else "")


def pigg_version() -> str:
    commit = git_commit()
    return pigg.__version__ + (f" (commit {commit})" if commit else "")


def collect() -> dict:
    """The report as a dict (what `pigg env --json` prints)."""
    import torch

    from pigg.train.build import usable_cpus

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                {"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
            )
    return {
        "pigg": pigg.__version__,
        "commit": git_commit(),
        "location": str(Path(pigg.__file__).resolve().parent),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,  # None on a CPU or ROCm build
            "rocm": getattr(torch.version, "hip", None),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
        "libraries": {name: version_of(name) for name in LIBRARIES},
        "gpus": gpus,
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "usable_cpus": usable_cpus(),
            **{name: os.environ.get(name) for name in THREAD_VARIABLES},
        },
    }


def describe(report: dict) -> str:
    """The report as plain text, one fact a line."""
    t = report["torch"]
    build = f"CUDA {t['cuda']}" if t["cuda"] else f"ROCm {t['rocm']}" if t["rocm"] else "CPU build"
    if t["cudnn"]:
        build += f", cuDNN {t['cudnn']}"
    gpus = [f"  {g['index']}: {g['name']}, {g['memory_gib']} GiB" for g in report["gpus"]] or [
        "  none visible"
    ]
    commit = f" (commit {report['commit']})" if report["commit"] else ""
    width = max(map(len, report["libraries"]))
    return "\n".join(
        [
            f"pigg {report['pigg']}{commit} at {report['location']}",
            f"Python {report['python']} ({report['executable']}) on {report['platform']}",
            f"torch {t['version']} ({build})",
            *(f"{name.ljust(width)}  {v or 'not installed'}" for name, v in report["libraries"].items()),
            "GPUs:",
            *gpus,
            "threads: "
            + ", ".join(f"{k} {'unset' if v is None else v}" for k, v in report["threads"].items()),
        ]
    )
