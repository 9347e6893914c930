"""The embedded demo behind `make demo`: pigg's whole loop on a tiny model, synthetic users and 2 CPU cores.

1. synthesise users with personal habits; 2. build the tiny Qwen3-VL; 3. train the global agent;
4. evaluate zero-shot vs global on held-out users; 5. personalize those users and evaluate them
zero-shot vs global vs personalized. The summary JSON holds the overall accuracies under `zero_shot`,
`global` and `personalized`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pigg.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIG = CONFIGS / "demo_global.yaml"


def run_demo(out: Path, users: int = 12, per_user: int = 80) -> Path:
    """Run every step (skipping data and model already built in `out`); returns the summary JSON's path."""
    import torch

    from pigg.data.synthetic import synthesize
    from pigg.grounding.evaluate import run_eval
    from pigg.grounding.personalize import personalize
    from pigg.models.tiny import build_tiny
    from pigg.train.run import train

    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    out = Path(out)
    data_dir, model_dir, run_dir = out / "data", out / "tiny-qwen3-vl", out / "runs" / "global"
    if not any(data_dir.glob("user_*.pkl")):
        print(f"[1/5] synthesising {users} users x {per_user} screens into {data_dir}")
        synthesize(data_dir, users=users, per_user=per_user)
    if not (model_dir / "config.json").exists():
        print(f"[2/5] building the tiny Qwen3-VL in {model_dir}")
        build_tiny("qwen3-vl", model_dir)
    overrides = [
        f"model.name={model_dir}",
        f"data.path={data_dir}",
        f"train.log_dir={out / 'logs'}",
        f"train.output_dir={run_dir}",
        f"data.image_cache={out / 'image_cache'}",  # everything the demo writes stays in its folder
    ]
    print("[3/5] training the global agent")
    summary = train(load_config(DEMO_CONFIG, overrides)).summary
    print("[4/5] zero-shot vs global on held-out users")
    held_out = json.loads(run_eval(["base", str(run_dir)]).read_text())["models"]
    print("[5/5] personalizing the held-out users")
    table = json.loads(personalize(run_dir).read_text())

    result = {
        # Overall click accuracy on the personalized users' test screens, for each stage of the loop.
        "zero_shot": table["overall"]["zero_shot"],
        "global": table["overall"]["global"],
        "personalized": table["overall"]["personalized"],
        "per_kind": table["per_kind"],
        "per_user": table["users"],
        "held_out_eval": {label: m["overall"]["accuracy"] for label, m in held_out.items()},
        "global_training": {k: summary[k] for k in ("steps", "train_seconds", "first_loss", "last_loss")},
        "reports": {
            "held_out": str(run_dir / "eval" / "eval.md"),
            "personalization": str(run_dir / "users" / "personalization.md"),
            "pngs": sorted(str(p) for p in run_dir.glob("**/*.png")),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = out / "demo_summary.json"
    path.write_text(json.dumps(result, indent=2))
    pct = {k: f"{100 * result[k]:.1f}%" for k in ("zero_shot", "global", "personalized")}
    print(
        f"\nclick accuracy: zero-shot {pct['zero_shot']} | global {pct['global']} | "
        f"personalized {pct['personalized']}  ({result['seconds']}s)"
    )
    return path
