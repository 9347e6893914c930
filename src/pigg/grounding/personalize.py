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
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pigg.config import ExperimentConfig, PersonalizeSection, load_config, parse_users
from pigg.data.render import Renderer
from pigg.data.sample import Sample
from pigg.errors import ConfigError, DataError
from pigg.grounding.agent import USERS_DIR, Agent, base_of, load_weights, resolve_model
from pigg.grounding.evaluate import EvalSettings, ModelEval, evaluate_agent
from pigg.grounding.metrics import summarize
from pigg.grounding.report import write_report

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


def train_user_adapter(model, renderer: Renderer, samples: list[Sample], p: PersonalizeSection, seed: int):
    """Train the model's active adapter on one user's adapt samples (HF Trainer, nothing saved)."""
    from pigg.train.trainer import build_trainer

    dtype = next(model.parameters()).dtype
    with tempfile.TemporaryDirectory(prefix="pigg_user_") as scratch:
        trainer = build_trainer(
            model,
            renderer,
            samples,
            p.batch_size,
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
        result = trainer.train()
    model.eval()
    return result.training_loss


def _concat(label: str, parts: list[ModelEval]) -> ModelEval:
    return ModelEval(label, [s for p in parts for s in p.scores], seconds=sum(p.seconds for p in parts))


def _accuracy_table(splits: list[UserSplit], evals: dict[str, ModelEval]) -> dict:
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
    return "\n".join(lines) + "\n"


def personalize(run_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Personalize the users chosen in the run's config (+ overrides); returns the results JSON's path."""
    from peft import get_peft_model

    from pigg.train.run import RUN_CONFIG, prepare_data

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
    cfg.data.train_users = spec
    cfg.train.eval = False
    data = prepare_data(cfg, run_dir=out)
    users = parse_users(spec) or sorted({s.user_id for s in data.train})  # None: every user in the data
    splits = []
    for user in users:
        mine = [s for s in data.train if s.user_id == user]
        if not mine:
            raise DataError(f"user {user} has no usable samples in {cfg.data.path}")
        splits.append(split_user(user, mine, p.adapt_fraction, p.split_seed))
    test_all = [s for split in splits for s in split.test]
    settings = EvalSettings(
        cfg.eval.batch_size, cfg.eval.radius, cfg.eval.max_new_tokens, image_cache=cfg.data.image_cache
    )
    print(
        f"personalizing {len(users)} users of {run_dir}: "
        + ", ".join(f"{s.user_id} ({len(s.adapt)} adapt / {len(s.test)} test)" for s in splits)
    )

    global_ref = resolve_model(str(run_dir))
    evals: dict[str, ModelEval] = {}
    zero_shot = Agent.load(base_of(global_ref), None, settings.max_new_tokens, settings.image_cache)
    evals["zero_shot"] = evaluate_agent(zero_shot, test_all, settings)
    del zero_shot
    gc.collect()

    # The global model, loaded once; every user's adapter is added to it, trained, saved and removed.
    agent = Agent(load_weights(global_ref), data.processor, data.renderer, label="global")
    evals["global"] = evaluate_agent(agent, test_all, settings)
    config = user_lora_config(agent.model, data.family, p)  # targets named on the unwrapped model
    peft_model, previous, parts, losses = None, None, [], {}
    for split in splits:
        name = str(split.user_id)
        if peft_model is None:
            peft_model = get_peft_model(agent.model, config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
            peft_model.set_adapter(name)
        if previous is not None:
            peft_model.delete_adapter(previous)
        print(f"user {name}: training a LoRA adapter on {len(split.adapt)} samples")
        losses[name] = train_user_adapter(peft_model, data.renderer, split.adapt, p, cfg.train.seed)
        agent.model, agent.label = peft_model, f"user {name}"
        parts.append(evaluate_agent(agent, split.test, settings))
        peft_model.peft_config[name].base_model_name_or_path = str(run_dir)
        peft_model.save_pretrained(str(out), selected_adapters=[name])
        previous = name
    evals["personalized"] = _concat("personalized", parts)

    table = _accuracy_table(splits, evals)
    table["train_loss"] = losses
    table["settings"] = {
        "run": str(run_dir),
        "personalize": p.model_dump(mode="json"),
        "eval": cfg.eval.model_dump(),
    }
    for phase in PHASES:
        evals[phase].label = phase
    write_report([evals[ph] for ph in PHASES], test_all, out / "eval", table["settings"])
    (out / "personalization.md").write_text(markdown(table))
    path = out / RESULTS
    path.write_text(json.dumps(table, indent=2))
    print(markdown(table))
    return path
