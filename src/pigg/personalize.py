"""`pigg personalize`: one small LoRA adapter per user on top of a global run, measured before and after.

For each chosen user the samples are split (per kind, by a fixed seed and fraction) into an adapt part,
which trains that user's adapter, and a test part, on which the user is evaluated three times: zero-shot
(the base model), global (the global run) and personalized (global + the user's adapter).

The global model is loaded once; user adapters are added to it, trained, saved under RUN/users/<id>/
and swapped out (peft multi-adapter), so neither the base nor the global weights are ever reloaded or
touched. Adapters are pure LoRA on the language model (no `modules_to_save`), so multi-LoRA servers
such as vLLM can serve them over the global weights; whatever trains fully belongs to the global run.
"""

from __future__ import annotations

import gc
import json
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pigg.config import ExperimentConfig, PersonalizeSection, load_config, parse_users
from pigg.data.render import Renderer
from pigg.data.sample import Sample
from pigg.errors import ConfigError, DataError
from pigg.evaluation.answers import evaluate
from pigg.infer import USERS_DIR, Agent, base_of, load_weights, resolve_model
from pigg.tasks.base import ModelResult
from pigg.tasks.grounding import GroundingTask, summarize, write_report

RESULTS = "personalization.json"
PHASES = ("zero_shot", "global", "personalized")


@dataclass
class UserSplit:
    user_id: int
    adapt: list[Sample]
    test: list[Sample]


def split_user(user_id: int, samples: list[Sample], adapt_fraction: float, seed: int) -> UserSplit:
    """Split one user's samples into adapt and test parts, the same way every time, per kind (so habits
    are in both parts)."""
    by_kind: dict[str, list[Sample]] = {}
    for sample in samples:
        by_kind.setdefault(str(sample.meta.get("kind", "all")), []).append(sample)
    adapt, test = [], []
    for kind in sorted(by_kind):
        group = list(by_kind[kind])
        random.Random(f"{seed}-{user_id}-{kind}").shuffle(group)
        cut = round(len(group) * adapt_fraction)
        if len(group) >= 2:
            cut = min(max(cut, 1), len(group) - 1)  # at least one sample on each side
        adapt += group[:cut]
        test += group[cut:]
    if not adapt or not test:
        raise DataError(
            f"user {user_id} has {len(samples)} usable samples: too few to split into adapt and test"
        )
    return UserSplit(user_id, adapt, test)


def check_held_out(global_users: list[int] | None, users: list[int]) -> None:
    """Personalized users must be held out of the global run's training: a user it trained on would make
    the global and personalized numbers meaningless (the habits already learned)."""
    trained = set(users) if global_users is None else set(users) & set(global_users)
    if trained:
        raise ConfigError(
            f"user(s) {sorted(trained)} are in the global run's training data (data.train_users); "
            "personalize users it never saw (its data.test_users)"
        )


def replay_for(
    split: UserSplit, pool: list[Sample], p: PersonalizeSection, seed: int, count: int
) -> list[Sample]:
    """`count` global training samples, seeded per user, every pool sample used once before any is used
    again, flagged as replayed (for the distillation term). With `replay_conflicts: skip` the pool leaves
    out samples asking exactly what one of the user's own samples asks: there the user's meaning wins
    ("the usual" is this user's favourite app, not another user's)."""
    from pigg.train.distill import mark_replayed

    if p.replay_conflicts == "skip":
        own = {s.instruction() for s in split.adapt}
        pool = [s for s in pool if s.instruction() not in own]
    if not pool or count <= 0:
        return []
    rng = random.Random(f"{seed}-replay-{split.user_id}")
    if count <= len(pool):
        return mark_replayed(rng.sample(pool, count))
    order = rng.sample(pool, len(pool))
    return mark_replayed([order[i % len(order)] for i in range(count)])


def adaptation_samples(
    split: UserSplit, pool: list[Sample], p: PersonalizeSection, seed: int, num_generations: int = 1
) -> list[Sample]:
    """What one user's adapter trains on: their adapt samples plus `replay_ratio` replayed global samples
    per adapt sample. With `replay_draw: per_pass` the adapt samples are listed once per pass the steps
    make over them, each pass with replayed samples of its own, so the steps see as much of the global
    data as they can; `once` repeats one draw every pass. Under GRPO a step takes `batch_size` answers,
    `num_generations` per sample."""
    per_pass = round(p.replay_ratio * len(split.adapt))
    passes = 1
    if p.replay_draw == "per_pass" and per_pass:
        per_step = max(1, p.batch_size // num_generations)
        passes = max(1, math.ceil(p.max_steps * per_step / (len(split.adapt) + per_pass)))
    return split.adapt * passes + replay_for(split, pool, p, seed, per_pass * passes)


def first_samples(samples: list[Sample], count: int) -> list[Sample]:
    """The first `count` samples taking the kinds in turn (a budget of 5 holds habits as well)."""
    by_kind: dict[str, list[Sample]] = {}
    for sample in samples:
        by_kind.setdefault(str(sample.meta.get("kind", "all")), []).append(sample)
    queues = [list(group) for _, group in sorted(by_kind.items())]
    taken: list[Sample] = []
    while len(taken) < count and any(queues):
        for queue in queues:
            if queue and len(taken) < count:
                taken.append(queue.pop(0))
    return taken


def user_lora_config(model, family, p: PersonalizeSection):
    from peft import LoraConfig

    from pigg.models.trainable import llm_linear_pattern

    return LoraConfig(
        r=p.r,
        lora_alpha=p.alpha,
        lora_dropout=p.dropout,
        target_modules=llm_linear_pattern(model, family),
        task_type="CAUSAL_LM",
    )


def train_user_adapter(
    model, renderer: Renderer, samples: list[Sample], p: PersonalizeSection, seed: int, grpo=None
):
    """Train the model's active adapter on one user's adapt samples, nothing saved: by imitation (HF
    Trainer), or with `grpo` = (config, processor) by the task's rewards (TRL's GRPO, the rl section)."""
    from pigg.train.distill import DistillTrainer, ReplayCollator
    from pigg.train.trainer import build_trainer

    dtype = next(model.parameters()).dtype
    distill = {}
    if p.distill > 0:
        distill = dict(
            collator=ReplayCollator(renderer),
            trainer_class=DistillTrainer,
            trainer_options={"distill": p.distill},
        )
    with tempfile.TemporaryDirectory(prefix="pigg_user_") as scratch:
        arguments = dict(
            output_dir=scratch,
            max_steps=p.max_steps,
            per_device_train_batch_size=p.batch_size,
            learning_rate=p.learning_rate,
            warmup_steps=p.warmup_steps,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            save_strategy="no",
            logging_steps=max(1, p.max_steps // 4),
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            bf16=dtype == torch.bfloat16,
            seed=seed,
        )
        if grpo is not None:
            from pigg.train.grpo import grpo_trainer

            cfg, processor = grpo
            trainer = grpo_trainer(cfg, model, samples, processor, renderer, arguments)
        else:
            trainer = build_trainer(model, renderer, samples, p.batch_size, **distill, **arguments)
        result = trainer.train()
    model.eval()
    return result.training_loss


def evaluate_agent(agent: Agent, samples: list[Sample], task: GroundingTask) -> ModelResult:
    """A loaded agent's clicks on `samples`, scored by the run's eval settings."""
    agent.max_new_tokens = task.cfg.eval.max_new_tokens
    return evaluate(agent, task, samples, task.cfg.eval.batch_size)


def _concat(task: GroundingTask, label: str, parts: list[ModelResult]) -> ModelResult:
    scores = [s for p in parts for s in p.scores]
    return ModelResult(label, scores, task.aggregate(scores), seconds=sum(p.seconds for p in parts))


def _accuracy_table(splits: list[UserSplit], evals: dict[str, ModelResult]) -> dict:
    """user → samples and each phase's accuracy, overall and per kind; plus the overall rows."""
    table: dict = {"users": {}, "overall": {}, "per_kind": {}}
    kinds = sorted({s.kind for s in evals["global"].scores})
    for split in splits:
        row: dict = {"adapt_samples": len(split.adapt), "test_samples": len(split.test)}
        for phase in PHASES:
            mine = [s for s in evals[phase].scores if s.user_id == split.user_id]
            row[phase] = summarize(mine)["accuracy"]
            for kind in kinds:
                row.setdefault("per_kind", {}).setdefault(kind, {})[phase] = summarize(
                    [s for s in mine if s.kind == kind]
                )["accuracy"]
        table["users"][str(split.user_id)] = row
    for phase in PHASES:
        table["overall"][phase] = summarize(evals[phase].scores)["accuracy"]
        for kind in kinds:
            table["per_kind"].setdefault(kind, {})[phase] = summarize(
                [s for s in evals[phase].scores if s.kind == kind]
            )["accuracy"]
    return table


def markdown(table: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}%"

    kinds = list(table["per_kind"])
    head = "| user | adapt | test | zero-shot | global | personalized |"
    extra = "".join(f" {k}: zero-shot | {k}: global | {k}: personalized |" for k in kinds if len(kinds) > 1)
    lines = [head + extra, "|---" * (6 + (3 * len(kinds) if len(kinds) > 1 else 0)) + "|"]
    rows = list(table["users"].items()) + [("all", {**table["overall"], "per_kind": table["per_kind"]})]
    for user, row in rows:
        cells = [user, str(row.get("adapt_samples", "")), str(row.get("test_samples", ""))]
        cells += [pct(row[p]) for p in PHASES]
        if len(kinds) > 1:
            cells += [pct(row["per_kind"].get(k, {}).get(p)) for k in kinds for p in PHASES]
        lines.append("| " + " | ".join(cells) + " |")
    if table.get("costs"):
        lines += ["", "| user | adapter on disk | training | peak memory | load adapter | activate |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for user, c in table["costs"].items():
            load = f"{c['load_ms']:.0f} ms" if "load_ms" in c else "-"
            activate = f"{c['activate_ms']:.2f} ms" if "activate_ms" in c else "-"
            lines.append(
                f"| {user} | {c['adapter_bytes'] / 2**20:.2f} MiB | {c['train_seconds']:.1f} s | "
                f"{c['peak_memory_bytes'] / 2**30:.2f} GiB | {load} | {activate} |"
            )
    if table.get("curve"):
        kinds = [k for k in table["per_kind"]]
        lines += ["", "| own samples | " + " | ".join(kinds) + " |", "|---:|" + "---:|" * len(kinds)]
        for point in sorted(table["curve"].values(), key=lambda c: c["samples"]):
            lines.append(f"| {point['samples']} | " + " | ".join(pct(point.get(k)) for k in kinds) + " |")
    for user, kinds in (table.get("forgetting") or {}).items():
        lines.append(f"\nuser {user} forgot: {', '.join(kinds)} fell below the global model's accuracy")
    return "\n".join(lines) + "\n"


class UserAdapters:
    """The global model with one user's adapter at a time (peft multi-adapter): a fresh adapter replaces
    the previous one; the global weights are never reloaded or touched."""

    def __init__(self, model, config):
        self.model, self.config = model, config
        self.peft = None  # the peft wrapper, made with the first adapter
        self.current: str | None = None

    def fresh(self, name: str, seed: int):
        """The model with a new, untrained adapter `name` active (the previous one deleted), initialised
        from `seed` alone: a user's adapter does not depend on which users were trained before."""
        from peft import get_peft_model

        torch.manual_seed(seed)
        if self.peft is None:
            self.peft = get_peft_model(self.model, self.config, adapter_name=name)
        else:
            self.peft.add_adapter(name, self.config)
            self.peft.set_adapter(name)
        if self.current is not None:
            self.peft.delete_adapter(self.current)
        self.current = name
        return self.peft


def train_measured(model, renderer, samples, p, seed, grpo=None) -> dict:
    """Train the active adapter; its loss, seconds and peak memory."""
    from pigg.train.measure import PeakMemory

    with PeakMemory() as peak:
        began = time.perf_counter()
        loss = train_user_adapter(model, renderer, samples, p, seed, grpo)
        seconds = time.perf_counter() - began
    return {"train_loss": loss, "train_seconds": round(seconds, 2), "peak_memory_bytes": peak.result.bytes}


def _switch_ms(adapters: UserAdapters, folder: Path) -> dict:
    """Milliseconds to load a saved user adapter into the loaded model and to make it the active one
    (then the adapter that was active is again)."""
    model = adapters.peft
    began = time.perf_counter()
    model.load_adapter(str(folder), adapter_name="_switch")
    loaded = time.perf_counter()
    model.set_adapter("_switch")
    switched = time.perf_counter()
    model.set_adapter(adapters.current)
    model.delete_adapter("_switch")
    return {"load_ms": round(1000 * (loaded - began), 2), "activate_ms": round(1000 * (switched - loaded), 3)}


def _forgetting(table: dict, tolerance: float) -> dict[str, list[str]]:
    """Per user, the kinds (or "all") on which personalized accuracy fell more than `tolerance` below
    the global model's."""
    flagged: dict[str, list[str]] = {}
    for user, row in table["users"].items():
        groups = row.get("per_kind") or {"all": row}
        for kind, phases in groups.items():
            before, after = phases["global"], phases["personalized"]
            if before is not None and after is not None and after < before - tolerance:
                flagged.setdefault(user, []).append(kind)
    return flagged


@dataclass
class Personalization:
    """What every user's adaptation needs, prepared once: the config, the data, each user's split, the
    replay pool (the global run's own training samples) and the task scoring clicks by the eval settings."""

    run_dir: Path
    cfg: ExperimentConfig
    data: object  # pigg.train.build.PreparedData
    splits: list[UserSplit]
    pool: list[Sample]
    task: GroundingTask

    @property
    def test_all(self) -> list[Sample]:
        return [s for split in self.splits for s in split.test]


def prepare_personalization(
    run_dir: str | Path, overrides: list[str] | None = None, replay_pool: bool | None = None
) -> Personalization:
    """Read the run's config (+ overrides), check the users are held out and split their samples; the
    replay pool is read when `replay_pool` (default: when the config replays)."""
    from pigg.train.build import RUN_CONFIG, prepare_data

    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).exists():
        raise ConfigError(
            f"{run_dir} is not a pigg run folder (no {RUN_CONFIG}); give the global run's folder"
        )
    cfg: ExperimentConfig = load_config(run_dir / RUN_CONFIG, overrides)
    p = cfg.personalize
    spec = p.users if p.users is not None else cfg.data.test_users
    if spec is None:
        raise ConfigError("no users to personalize: set personalize.users (e.g. personalize.users=1-10)")
    out = run_dir / USERS_DIR
    global_cfg = cfg.model_copy(deep=True)  # the global run's own data: the replay pool
    cfg.data.train_users = spec
    cfg.train.eval = False
    data = prepare_data(cfg, run_dir=out)
    users = parse_users(spec) or sorted({s.user_id for s in data.train})  # None: every user in the data
    check_held_out(parse_users(global_cfg.data.train_users), users)
    splits = []
    for user in users:
        mine = [s for s in data.train if s.user_id == user]
        if not mine:
            raise DataError(f"user {user} has no usable samples in {cfg.data.path}")
        splits.append(split_user(user, mine, p.adapt_fraction, p.split_seed))
    if p.stage == "grpo":
        from pigg.train.grpo import check_grpo

        check_grpo(cfg)  # TRL installed, the rewards the task has: before any model loads
    pool: list[Sample] = []
    if replay_pool or (replay_pool is None and p.replay_ratio > 0):
        global_cfg.train.eval = False
        pool = prepare_data(global_cfg, run_dir=out).train
    return Personalization(run_dir, cfg, data, splits, pool, GroundingTask(cfg))


def grpo_settings(prep: Personalization) -> tuple | None:
    """(config, processor) for per-user GRPO (personalize.stage: grpo), else None."""
    return (prep.cfg, prep.data.processor) if prep.cfg.personalize.stage == "grpo" else None


def personalize(run_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Personalize the users chosen in the run's config (+ overrides); returns the results JSON's path."""
    from pigg.train.distill import REPLAY_META

    prep = prepare_personalization(run_dir, overrides)
    run_dir, cfg, data, splits, pool, task = (
        prep.run_dir, prep.cfg, prep.data, prep.splits, prep.pool, prep.task
    )  # fmt: skip
    p, out, test_all = cfg.personalize, prep.run_dir / USERS_DIR, prep.test_all
    grpo = grpo_settings(prep)
    generations = cfg.rl.num_generations if grpo else 1
    print(
        f"personalizing {len(splits)} users of {run_dir}: "
        + ", ".join(f"{s.user_id} ({len(s.adapt)} adapt / {len(s.test)} test)" for s in splits)
        + (f"; replaying {p.replay_ratio:g} global sample(s) per adapt sample" if pool else "")
    )

    global_ref = resolve_model(str(run_dir))
    evals: dict[str, ModelResult] = {}
    zero_shot = Agent.load(base_of(global_ref), None, cfg.eval.max_new_tokens, cfg.data.image_cache)
    evals["zero_shot"] = evaluate_agent(zero_shot, test_all, task)
    del zero_shot
    gc.collect()

    # The global model, loaded once; every user's adapter is added to it, trained, saved and removed.
    agent = Agent(load_weights(global_ref), data.processor, data.renderer, label="global")
    evals["global"] = evaluate_agent(agent, test_all, task)
    config = user_lora_config(agent.model, data.family, p)  # targets named on the unwrapped model
    adapters = UserAdapters(agent.model, config)
    parts, costs = [], {}
    for split in splits:
        name = str(split.user_id)
        model = adapters.fresh(name, cfg.train.seed)
        samples = adaptation_samples(split, pool, p, cfg.train.seed, generations)
        replayed = sum(bool(s.meta.get(REPLAY_META)) for s in samples)
        print(
            f"user {name}: training a LoRA adapter ({p.stage}) on {len(split.adapt)} own samples"
            + (f" and {replayed} replayed global samples" if replayed else "")
        )
        costs[name] = train_measured(model, data.renderer, samples, p, cfg.train.seed, grpo)
        agent.model, agent.label = model, f"user {name}"
        parts.append(evaluate_agent(agent, split.test, task))
        model.peft_config[name].base_model_name_or_path = str(run_dir.resolve())  # loads from any folder
        model.save_pretrained(str(out), selected_adapters=[name])
        costs[name]["adapter_bytes"] = sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file())
    evals["personalized"] = _concat(task, "personalized", parts)
    if splits:
        costs[str(splits[-1].user_id)].update(_switch_ms(adapters, out / str(splits[0].user_id)))

    table = _accuracy_table(splits, evals)
    table["costs"] = costs
    table["forgetting"] = _forgetting(table, p.forget_tolerance)
    if p.budgets:
        table["curve"] = _budget_curve(agent, adapters, splits, pool, p, cfg.train.seed, task, grpo)
        table["curve"]["full"] = {  # the saved adapters, trained on every adapt sample
            "samples": max(len(s.adapt) for s in splits),
            "all": table["overall"]["personalized"],
            **{kind: phases["personalized"] for kind, phases in table["per_kind"].items()},
        }
        plot_curve(table, out / "data_efficiency.png")
    table["settings"] = {
        "run": str(run_dir),
        "personalize": p.model_dump(mode="json"),
        "eval": cfg.eval.model_dump(),
    }
    for phase in PHASES:
        evals[phase].model = phase
    write_report([evals[ph] for ph in PHASES], test_all, out / "eval", table["settings"])
    (out / "personalization.md").write_text(markdown(table))
    path = out / RESULTS
    path.write_text(json.dumps(table, indent=2))
    print(markdown(table))
    for user, kinds in table["forgetting"].items():
        print(
            f"warning: user {user} forgot: personalized accuracy on {', '.join(kinds)} fell more than "
            f"{100 * p.forget_tolerance:g} points below the global model's (replay helps: "
            "personalize.replay_ratio with more max_steps, docs/grounding.md)"
        )
    return path


def _budget_curve(agent, adapters: UserAdapters, splits, pool, p, seed: int, task, grpo=None) -> dict:
    """Per budget: every user's fresh adapter on that many of their adapt samples (replay in the same
    ratio), evaluated on the same test screens; accuracy per kind (personalized), training seconds and
    peak memory per user."""
    generations = grpo[0].rl.num_generations if grpo else 1
    curve: dict = {}
    for budget in p.budgets:
        parts, costs = [], []
        for split in splits:
            model = adapters.fresh(f"{split.user_id}@{budget}", seed)
            adapt = first_samples(split.adapt, budget)
            part = UserSplit(split.user_id, adapt, split.test)
            print(f"user {split.user_id}: budget {budget} ({len(adapt)} samples)")
            samples = adaptation_samples(part, pool, p, seed, generations)
            costs.append(train_measured(model, agent.renderer, samples, p, seed, grpo))
            agent.model = model
            parts.append(evaluate_agent(agent, split.test, task))
        scores = [s for part in parts for s in part.scores]
        kinds = sorted({s.kind for s in scores})
        curve[str(budget)] = {
            "samples": budget,
            "all": summarize(scores)["accuracy"],
            **{kind: summarize([s for s in scores if s.kind == kind])["accuracy"] for kind in kinds},
            "train_seconds": round(sum(c["train_seconds"] for c in costs) / len(costs), 2),  # per user
            "peak_memory_bytes": max(c["peak_memory_bytes"] for c in costs),
        }
    return curve


def plot_curve(table: dict, path: Path) -> None:
    """Accuracy per kind against the user's own samples, with the zero-shot and global levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = table["curve"]
    points = sorted(curve.values(), key=lambda c: c["samples"])
    kinds = list(table["per_kind"]) or ["all"]
    figure, ax = plt.subplots(figsize=(7, 4.2))
    for k, kind in enumerate(kinds):
        colour = f"C{k}"
        xs = [c["samples"] for c in points]
        ys = [100 * (c.get(kind) or 0) for c in points]
        ax.plot(xs, ys, marker="o", color=colour, label=f"{kind}: personalized")
        ax.axhline(
            100 * table["per_kind"][kind]["global"], color=colour, linestyle="--", label=f"{kind}: global"
        )
    ax.axhline(100 * (table["overall"]["zero_shot"] or 0), color="gray", linestyle=":", label="zero-shot")
    ax.set_xlabel("the user's own samples")
    ax.set_ylabel("accuracy on the user's test screens (%)")
    ax.set_title("data efficiency of personalization")
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
