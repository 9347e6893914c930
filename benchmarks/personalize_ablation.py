"""Personalization settings side by side on one global run: generic and habit accuracy, training time.

    python benchmarks/personalize_ablation.py RUN "replay_ratio=0" "replay_ratio=1" \\
        "replay_ratio=2 max_steps=120" ... [--seeds 0,1,2,3] [--budgets 1,2,5] [--out ablation.json]

Each argument is a variant: space-separated key=value overrides of the run's own config, `personalize.`
keys by their short name. `--seeds 0,1,2,3` runs each variant under each train.seed (other replay
samples, another adapter init, another data order) and reports the mean with the range: on a small test
set one seed's result moves by a point or two. The global model is loaded and evaluated once; every
user gets a fresh adapter per variant and seed, trained on the same adapt samples and evaluated on the
same test screens as `pigg personalize` uses. `--budgets` trains each variant on only that many of each
user's adapt samples (the test screens unchanged): per-user SFT against per-user GRPO at small budgets is
`"max_steps=60" "stage=grpo batch_size=16 max_steps=20 rl.num_generations=8" --budgets 1,2,5,10,20`.
Nothing is saved under RUN/users. The docs' ablation table (docs/grounding.md) and the SFT-vs-GRPO table
(docs/rl.md) come from this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from pigg.config import load_config
from pigg.infer import Agent, load_weights, resolve_model
from pigg.personalize import (
    UserAdapters,
    UserSplit,
    adaptation_samples,
    evaluate_agent,
    first_samples,
    prepare_personalization,
    train_measured,
    user_lora_config,
)
from pigg.tasks.grounding import summarize
from pigg.train.build import RUN_CONFIG


def per_kind(scores) -> dict:
    kinds = sorted({s.kind for s in scores})
    return {kind: summarize([s for s in scores if s.kind == kind])["accuracy"] for kind in kinds}


def run_variant(prep, agent, adapters, base_config, variant: str, seed: int, tag: str, budget=None) -> dict:
    """Every user's fresh adapter under `variant` with train.seed `seed` (on `budget` own samples, else all
    of them): accuracy per kind, seconds per user, peak memory."""
    overrides = [item if "." in item.split("=")[0] else f"personalize.{item}" for item in variant.split()]
    cfg = load_config(prep.run_dir / RUN_CONFIG, [*overrides, f"train.seed={seed}"])
    p = cfg.personalize
    grpo = (cfg, prep.data.processor) if p.stage == "grpo" else None
    adapters.config = dataclasses.replace(base_config, r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout)
    scores, costs = [], []
    for split in prep.splits:
        model = adapters.fresh(f"{split.user_id}-{tag}", seed)
        if budget is not None:
            split = UserSplit(split.user_id, first_samples(split.adapt, budget), split.test)
        samples = adaptation_samples(split, prep.pool, p, seed, cfg.rl.num_generations if grpo else 1)
        costs.append(train_measured(model, prep.data.renderer, samples, p, seed, grpo))
        agent.model, agent.label = model, f"user {split.user_id} [{variant}] seed {seed}"
        scores += evaluate_agent(agent, split.test, prep.task).scores
    return {
        **per_kind(scores),
        "train_seconds": round(sum(c["train_seconds"] for c in costs) / len(costs), 1),  # per user
        "peak_memory_bytes": max(c["peak_memory_bytes"] for c in costs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("variants", nargs="+", help='e.g. "replay_ratio=2 max_steps=120"')
    parser.add_argument("--seeds", default="0", help="train.seed values, e.g. 0,1,2,3: mean, min and max")
    parser.add_argument("--budgets", default=None, help="own samples per user, e.g. 1,2,5,10,20")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [None]

    prep = prepare_personalization(args.run, replay_pool=True)
    agent = Agent(load_weights(resolve_model(str(args.run))), prep.data.processor, prep.data.renderer)
    agent.label = "global"
    reference = per_kind(evaluate_agent(agent, prep.test_all, prep.task).scores)
    kinds = list(reference)
    # target modules named once on the unwrapped model; rank, alpha and dropout per variant
    base_config = user_lora_config(agent.model, prep.data.family, prep.cfg.personalize)
    adapters = UserAdapters(agent.model, base_config)
    rows = []
    for budget in budgets:
        for k, variant in enumerate(args.variants):
            runs = []
            for seed in seeds:
                tag = f"{k}-{seed}-{budget}"
                runs.append(run_variant(prep, agent, adapters, base_config, variant, seed, tag, budget))
                print(
                    json.dumps({"variant": variant, "budget": budget, "seed": seed, **runs[-1]}), flush=True
                )
            rows.append({"variant": variant, "budget": budget, "seeds": seeds, "runs": runs})

    def cell(values: list[float]) -> str:
        mean = 100 * statistics.fmean(values)
        if len(values) == 1:
            return f"{mean:.1f}%"
        return f"{mean:.1f}% ({100 * min(values):.1f}-{100 * max(values):.1f})"

    print("\nglobal model: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in reference.items()))
    print(f"\n| own samples | personalization | {' | '.join(kinds)} | training per user | peak memory |")
    print("|---:|---|" + "---:|" * (len(kinds) + 2))
    for row in rows:
        cells = [cell([r[k] for r in row["runs"]]) for k in kinds]
        seconds = statistics.fmean(r["train_seconds"] for r in row["runs"])
        memory = max(r["peak_memory_bytes"] for r in row["runs"]) / 2**30
        print(
            f"| {row['budget'] or 'all'} | {row['variant']} | "
            + " | ".join(cells)
            + f" | {seconds:.1f} s | {memory:.2f} GiB |"
        )
    if args.out:
        args.out.write_text(json.dumps({"global": reference, "variants": rows}, indent=2))


if __name__ == "__main__":
    main()
