"""Shared fixtures: one tiny Qwen3-VL and one small synthetic data set per test session.

Real Qwen asset files (tokenizer, templates, full-size configs) are read from ../shared/assets when
present; tests that need them skip with the reason when they are absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
# data.image_cache defaults to ~/.cache/pigg; tests keep theirs in a folder of their own
os.environ["PIGG_CACHE"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pigg_test_cache_{os.getpid()}")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)

# Property-based fuzzing of the readers (test_fuzz_data.py): a bounded run in `make test`, the long one with
# `make fuzz` (pytest --hypothesis-profile=fuzz). The deadline is the "no hang" part of the property.
settings.register_profile("default", max_examples=40, deadline=10_000, print_blob=True)
settings.register_profile("fuzz", max_examples=2000, deadline=10_000, print_blob=True)
settings.load_profile("default")

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
REPO = Path(__file__).resolve().parents[1]


def difference(got, want, relative: bool = False) -> float:
    """The largest |got - want| over floats, tensors or dicts of tensors (keys must agree); relative: divided
    by the largest |want|, for values whose scale is not known in advance."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
        return max(difference(got[k], want[k], relative) for k in want)
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    diff = float((got - want).abs().max())
    return diff / max(float(want.abs().max()), 1e-30) if relative else diff


def within(name: str, measured: float, tolerance: float) -> None:
    """Assert `measured < tolerance`. With PIGG_TOLERANCE_LOG set, each measurement is also appended to that
    file: benchmarks/tolerances.py reruns the tests under other CPU kernels and reads it, so every tolerance
    sits beside the float noise measured for it (docs/testing.md)."""
    _record(name, "equal", measured, tolerance)
    assert measured < tolerance, f"{name}: {measured:.3g} is not below the tolerance {tolerance:.3g}"


def caught(name: str, measured: float, tolerance: float, margin: float = 10.0) -> None:
    """Assert that a deliberate bug (a mutation) moves the same comparison `margin` times past its
    tolerance: a tolerance loosened that far would still fail on it."""
    _record(name, "bug", measured, tolerance)
    assert measured > margin * tolerance, (
        f"{name}: the bug moves it by {measured:.3g} only (tolerance {tolerance:.3g})"
    )


def _record(name: str, kind: str, measured: float, tolerance: float) -> None:
    log = os.environ.get("PIGG_TOLERANCE_LOG")
    if log:
        row = {"name": name, "kind": kind, "measured": measured, "tolerance": tolerance}
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")


def asset(name: str) -> Path:
    path = ASSETS / name
    if not (path / "vocab.json").exists():
        pytest.skip(f"real Qwen asset folder {path} is absent (it lives in ../shared/assets)")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from pigg.models.tiny import build_tiny

    return build_tiny("qwen3-vl", tmp_path_factory.mktemp("tiny") / "tiny-qwen3-vl")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from pigg.data.synth.screens import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "data", users=3, per_user=8, seed=1)


@pytest.fixture(scope="session")
def fixed_data(tmp_path_factory):
    """The "fixed" layout (each label on its own cell): the instruction alone says where to click, which
    a random-weight tiny model learns in seconds; habit samples ("the usual") differ per user."""
    from pigg.data.synth.screens import synthesize

    return synthesize(
        tmp_path_factory.mktemp("fixed") / "data",
        users=4,
        per_user=40,
        habit_fraction=0.25,
        seed=3,
        layout="fixed",
    )


@pytest.fixture(scope="session")
def trained_run(tiny_model, fixed_data, tmp_path_factory):
    """A global full fine-tuning run on users 3-4; users 1-2 are held out."""
    from pigg.config import build_config
    from pigg.train.run import train

    folder = tmp_path_factory.mktemp("global")
    raw = {
        "model": {"name": str(tiny_model)},
        "data": {"path": str(fixed_data), "train_users": "3-4", "test_users": "1-2", "max_length": 256},
        "train": {
            "method": "full",
            "output_dir": str(folder / "run"),
            "log_dir": str(folder / "logs"),
            "learning_rate": 3e-3,
            "batch_size": 8,
            "grad_accum": 1,
            "max_steps": 150,
            "warmup_steps": 5,
            "save_steps": 1000,
            "logging_steps": 20,
            "gradient_checkpointing": False,
        },
        "eval": {"batch_size": 16},
        "personalize": {"users": "1-2", "learning_rate": 5e-3, "max_steps": 25, "batch_size": 8, "r": 8},
    }
    train(build_config(raw, []))
    return folder / "run"


@pytest.fixture
def tiny_config(tiny_model, synth_data, tmp_path):
    """A config factory for short tiny runs; overrides are dotted key=value strings."""
    from pigg.config import build_config

    def make(*overrides: str):
        raw = {
            "model": {"name": str(tiny_model)},
            "data": {"path": str(synth_data), "train_users": "1-3", "max_length": 256},
            "train": {
                "output_dir": str(tmp_path / "run"),
                "log_dir": str(tmp_path / "logs"),
                "learning_rate": 2e-3,
                "batch_size": 4,
                "grad_accum": 1,
                "max_steps": 4,
                "save_steps": 100,
                "logging_steps": 1,
                "gradient_checkpointing": False,
            },
        }
        return build_config(raw, list(overrides))

    return make


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(os.environ["PIGG_CACHE"], ignore_errors=True)
