"""The embedded demo behind `make demo`: pigg's whole loop on a tiny model, synthetic users and 2 CPU cores.

1. synthesise users with personal habits; 2. build the tiny Qwen3-VL; 3. train the global agent;
4. evaluate zero-shot vs global on held-out users; 5. personalize those users and evaluate them
zero-shot vs global vs personalized. The summary JSON holds the overall accuracies under `zero_shot`,
`global` and `personalized`.

Beside it: `pigg demo grpo` (the same SFT on the jitter layout, then GRPO with click rewards from it;
run_grpo_demo) and `pigg demo text` (seed 004 in miniature; run_text_demo).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pigg.config import load_config, parse_users
from pigg.recipes import RECIPES

DEMO_CONFIG = RECIPES / "demo_global.yaml"
TEXT_DEMO_CONFIG = RECIPES / "demo_text.yaml"
GRPO_DEMO_CONFIG = RECIPES / "demo_grpo.yaml"


def run_demo(
    out: Path,
    users: int = 12,
    per_user: int = 80,
    held_out_screens: int = 400,
    overrides: list[str] | None = None,
) -> Path:
    """Run every step (skipping data and model already built in `out`); returns the summary JSON's path.
    `overrides` go on top of the demo_global recipe."""
    import torch

    from pigg.evaluation.run import run_eval
    from pigg.personalize import personalize
    from pigg.train.run import train

    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    out = Path(out)
    data_dir, model_dir, run_dir = out / "data", out / "tiny-qwen3-vl", out / "runs" / "global"
    # The held-out users get many screens: few adapt their adapter, the rest are test screens, so that
    # forgetting of one point is measurable (one screen is ~0.2 points of generic accuracy).
    held_out = parse_users(load_config(DEMO_CONFIG).personalize.users) or []
    _users_and_model(out, users, per_user, dict.fromkeys(held_out, held_out_screens), "random")
    overrides = [
        f"model.name={model_dir}",
        f"data.path={data_dir}",
        f"train.log_dir={out / 'logs'}",
        f"train.output_dir={run_dir}",
        f"data.image_cache={out / 'image_cache'}",  # everything the demo writes stays in its folder
        *(overrides or []),
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
        "forgetting": table["forgetting"],  # users whose generic accuracy fell past the tolerance
        "costs": table["costs"],  # per user: adapter bytes, training seconds, memory, switch ms
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


def _users_and_model(out: Path, users: int, per_user: int, counts: dict[int, int], layout) -> None:
    """The grounding demos' synthetic users (OUT/data; `counts` screens for chosen users) and tiny
    Qwen3-VL (OUT/tiny-qwen3-vl), each built unless already there."""
    from pigg.data.synth.screens import synthesize
    from pigg.models.tiny import build_tiny

    data_dir, model_dir = out / "data", out / "tiny-qwen3-vl"
    if not any(data_dir.glob("user_*.pkl")):
        more = ", ".join(f"{n} for user {u}" for u, n in counts.items())
        print(
            f"[1/5] synthesising {users} users x {per_user} {layout}-layout screens ({more}) into {data_dir}"
        )
        synthesize(data_dir, users=users, per_user=per_user, layout=layout, counts=counts)
    if not (model_dir / "config.json").exists():
        print(f"[2/5] building the tiny Qwen3-VL in {model_dir}")
        build_tiny("qwen3-vl", model_dir)


def run_grpo_demo(
    out: Path,
    users: int = 12,
    per_user: int = 80,
    held_out_screens: int = 200,
    sft_overrides: list[str] | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """Click-reward RL after SFT: synthetic users on the jitter layout, the tiny Qwen3-VL trained by SFT as
    `make demo` trains it, then GRPO (the demo_grpo recipe, + `overrides`) from that run, and zero-shot vs
    SFT vs SFT+GRPO on the held-out users; returns the summary JSON's path (`sft` and `grpo` held-out click
    accuracy, `reward_first` and `reward_last`: the mean reward of the first and last 10% of steps)."""
    import torch

    from pigg.evaluation.run import run_eval
    from pigg.infer import resolve_model
    from pigg.train.run import train

    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    out = Path(out)
    data_dir, model_dir = out / "data", out / "tiny-qwen3-vl"
    sft_dir, grpo_dir = out / "runs" / "sft", out / "runs" / "grpo"
    cfg = load_config(GRPO_DEMO_CONFIG)
    held_out = parse_users(cfg.data.test_users) or []
    _users_and_model(out, users, per_user, dict.fromkeys(held_out, held_out_screens), "jitter")
    shared = [
        f"data.path={data_dir}",
        f"train.log_dir={out / 'logs'}",
        f"data.image_cache={out / 'image_cache'}",
    ]
    print("[3/5] SFT: the global agent, as `make demo` trains it")
    sft = [f"model.name={model_dir}", f"train.output_dir={sft_dir}", *shared, *(sft_overrides or [])]
    sft_summary = train(load_config(DEMO_CONFIG, sft)).summary
    print("[4/5] GRPO from the SFT run, rewarded by the clicks")
    grpo = [f"model.name={sft_dir}", f"model.init_from={sft_dir}", f"train.output_dir={grpo_dir}", *shared]
    grpo_summary = train(load_config(GRPO_DEMO_CONFIG, [*grpo, *(overrides or [])])).summary
    print("[5/5] zero-shot vs SFT vs SFT+GRPO on the held-out users")
    report = json.loads(
        run_eval(
            ["base", str(sft_dir), str(grpo_dir)], users=cfg.data.test_users, out=out / "eval"
        ).read_text()
    )["models"]
    labels = {"zero_shot": "base", "sft": resolve_model(str(sft_dir)).label,
              "grpo": resolve_model(str(grpo_dir)).label}  # fmt: skip
    rewards = grpo_summary["rewards"]
    tenth = max(1, len(rewards) // 10)
    result = {
        # Held-out click accuracy (users the runs never trained on) for each stage.
        **{key: report[label]["overall"]["accuracy"] for key, label in labels.items()},
        "reward_first": sum(r for _, r in rewards[:tenth]) / tenth,  # mean reward, first 10% of steps
        "reward_last": sum(r for _, r in rewards[-tenth:]) / tenth,  # and last 10%
        "per_kind": {
            key: {kind: m["accuracy"] for kind, m in report[label]["per_kind"].items()}
            for key, label in labels.items()
        },
        "median_distance": {
            key: report[label]["overall"]["median_distance_frac"] for key, label in labels.items()
        },
        "training": {
            name: {k: summary[k] for k in ("steps", "train_seconds")}
            for name, summary in (("sft", sft_summary), ("grpo", grpo_summary))
        },
        "rewards": rewards,
        "reports": {"eval": str(out / "eval" / "eval.md"), "reward_png": str(out / "reward_curve.png")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    plot_rewards(rewards, out / "reward_curve.png")
    path = out / "demo_grpo_summary.json"
    path.write_text(json.dumps(result, indent=2))
    print(
        f"\nheld-out click accuracy: zero-shot {100 * result['zero_shot']:.1f}% | SFT {100 * result['sft']:.1f}% "
        f"| SFT+GRPO {100 * result['grpo']:.1f}%; mean reward {result['reward_first']:.3f} (first 10% of steps) "
        f"-> {result['reward_last']:.3f} (last 10%)  ({result['seconds']}s)"
    )
    return path


def plot_rewards(rewards: list[tuple[int, float]], path: Path) -> None:
    """Mean reward per GRPO step, and its moving average over a tenth of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = [s for s, _ in rewards], [r for _, r in rewards]
    window = max(1, len(values) // 10)
    average = []
    for i in range(len(values)):
        recent = values[max(0, i - window + 1) : i + 1]
        average.append(sum(recent) / len(recent))
    figure, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, values, color="C0", alpha=0.35, label="mean reward of the step's answers")
    ax.plot(steps, average, color="C0", label=f"moving average ({window} steps)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_title("click reward during GRPO")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_text_demo(
    out: Path, train_articles: int = 2400, test_articles: int = 400, overrides: list[str] | None = None
) -> Path:
    """Seed 004 in miniature: synthetic news, a tiny Qwen2.5, full fine-tuning, base vs tuned by
    generation (and by likelihood), data plots; returns the summary JSON's path (`base` and `tuned` with
    `accuracy` and `macro_f1`, and the tuned model's `items_per_second`). `overrides` go on top of
    the demo_text recipe."""
    import torch

    from pigg.data.synth.news import synthesize_news, vocabulary
    from pigg.evaluation.run import run_eval
    from pigg.infer import resolve_model
    from pigg.models.tiny import build_tiny
    from pigg.train.run import train

    torch.set_num_threads(min(2, torch.get_num_threads()))
    started = time.perf_counter()
    out = Path(out)
    data_dir, model_dir, run_dir = out / "data", out / "tiny-qwen2.5", out / "runs" / "news"
    if not (data_dir / "test.jsonl").exists():
        print(
            f"[1/5] synthesising {train_articles} training and {test_articles} held-out articles in {data_dir}"
        )
        synthesize_news(data_dir / "train.jsonl", train_articles, seed=0)
        synthesize_news(data_dir / "test.jsonl", test_articles, seed=1)
    if not (model_dir / "config.json").exists():
        print(f"[2/5] building the tiny Qwen2.5 in {model_dir}")
        build_tiny("qwen2.5", model_dir, extra_words=vocabulary())
    overrides = [
        f"model.name={model_dir}",
        f"data.path={data_dir / 'train.jsonl'}",
        f"data.eval_path={data_dir / 'test.jsonl'}",
        f"train.log_dir={out / 'logs'}",
        f"train.output_dir={run_dir}",
        *(overrides or []),
    ]
    cfg = load_config(TEXT_DEMO_CONFIG, overrides)
    print("[3/5] the data: class distribution and lengths")
    stats = _text_stats(cfg, out / "data_stats")
    print("[4/5] full fine-tuning")
    summary = train(cfg).summary
    print("[5/5] base vs tuned on the held-out articles")
    tuned = resolve_model(str(run_dir))
    report = json.loads(run_eval(["base", str(run_dir)], mode="both").read_text())
    results = report["results"]

    def section(name: str) -> dict:
        r = results[name]
        per_class = {c["label"]: c["f1"] for c in r["score"]["per_class"]}
        return {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "parse_failures": r["parse_failures"],
                "per_class_f1": per_class, "throughput": r["throughput"]}  # fmt: skip

    result = {
        "base": section("base"),
        "tuned": section(tuned.label),
        "base_likelihood": section("base (likelihood)"),
        "tuned_likelihood": section(f"{tuned.label} (likelihood)"),
        "items_per_second": results[tuned.label]["throughput"]["items_per_second"],
        "training": {k: summary[k] for k in ("steps", "train_seconds", "first_loss", "last_loss")},
        "data": stats,
        "reports": {
            "table": str(run_dir / "eval" / "classification.md"),
            "confusion_png": report["confusion_png"],
            "pngs": sorted(str(p) for p in out.glob("**/*.png")),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = out / "demo_text_summary.json"
    path.write_text(json.dumps(result, indent=2))
    b, t = result["base"], result["tuned"]
    print(
        f"\naccuracy: base {100 * b['accuracy']:.1f}% -> tuned {100 * t['accuracy']:.1f}% | macro-F1 "
        f"{100 * b['macro_f1']:.1f}% -> {100 * t['macro_f1']:.1f}% | {result['items_per_second']:.1f} items/s "
        f"({result['seconds']}s)"
    )
    return path


def _text_stats(cfg, out: Path) -> dict:
    """Seed 004's data plots for the demo's training and held-out articles."""
    from pigg.data.stats import data_stats
    from pigg.data.validate import validate
    from pigg.train.build import prepare_data

    data = prepare_data(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval": True})}), run_dir=out
    )
    tokens = validate(data.eval, data.renderer, cfg.data.max_length).tokens
    splits = {
        "train": (data.train, [t for t, _ in data.tokens()]),
        "held out": (data.eval, [t for t, _ in tokens]),
    }
    return json.loads(data_stats(splits, out, cfg.data.max_length, cfg.classify.labels).read_text())
