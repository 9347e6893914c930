"""The embedded demo behind `make demo`: everything on a tiny model, synthetic users and 2 CPU cores."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pigg.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run_demo(out: Path, users: int = 10, per_user: int = 24) -> Path:
    """Synthesise users, build the tiny Qwen3-VL, train it globally with LoRA and with full fine-tuning.

    Returns the path of a JSON summary (also printed last by the CLI).
    """
    import torch

    from pigg.data.synthetic import synthesize
    from pigg.models.tiny import build_tiny
    from pigg.train.run import train

    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    out = Path(out)
    data_dir, model_dir = out / "data", out / "tiny-qwen3-vl"
    if not any(data_dir.glob("user_*.pkl")):
        print(f"[1/4] synthesising {users} users x {per_user} screens into {data_dir}")
        synthesize(data_dir, users=users, per_user=per_user)
    if not (model_dir / "config.json").exists():
        print(f"[2/4] building the tiny Qwen3-VL in {model_dir}")
        build_tiny("qwen3-vl", model_dir)
    paths = [f"model.name={model_dir}", f"data.path={data_dir}", f"train.log_dir={out / 'logs'}"]
    results = {}
    for step, method in ((3, "lora"), (4, "full")):
        print(f"[{step}/4] global {method} fine-tuning")
        cfg = load_config(
            CONFIGS / f"demo_{method}.yaml", [*paths, f"train.output_dir={out / 'runs' / f'global_{method}'}"]
        )
        results[method] = train(cfg).summary

    print("\nmethod | steps | seconds | loss first -> last")
    for method, s in results.items():
        print(
            f"{method:6} | {s['steps']:5} | {s['train_seconds']:7} | {s['first_loss']:.3f} -> {s['last_loss']:.3f}"
        )
    summary = {
        "seconds": round(time.perf_counter() - started, 1),
        "runs": {m: {k: v for k, v in s.items() if k != "losses"} for m, s in results.items()},
    }
    path = out / "demo_summary.json"
    path.write_text(json.dumps(summary, indent=2))
    return path
