"""`pigg eval`: one or more models on the same samples of any task, and one report.

The models are resolved ("base" = the base of the others), the samples read and checked once as the task
reads them, each model loaded in turn and asked by each mode (pigg.evaluation.answers), its answers
scored by the task, and the task's report written. The samples: a pigg run's test users (tasks chosen by
user) or its data.eval_path (classification), unless --data / --users say otherwise.
"""

from __future__ import annotations

import gc
from pathlib import Path

import yaml

from pigg.config import ExperimentConfig, build_config, load_config
from pigg.errors import ConfigError
from pigg.evaluation.answers import MODES, evaluate
from pigg.infer import Agent, ModelRef, base_of, resolve_model
from pigg.tasks import task_class, task_for
from pigg.tasks.base import ModelResult, Task
from pigg.train.build import RUN_CONFIG, prepare_data


def run_task(ref: ModelRef) -> str:
    """The task of the pigg run behind `ref` (grounding when it is no pigg run)."""
    run = ref.run_dir
    if run is None or not (run / RUN_CONFIG).exists():
        return "grounding"
    return (yaml.safe_load((run / RUN_CONFIG).read_text()) or {}).get("task", "grounding")


def eval_config(
    ref: ModelRef, task: str, data: str | None, users: str | None, max_samples: int | None
) -> ExperimentConfig:
    """The data settings of an evaluation: the run's own config where the model is a pigg run, with what
    the command line says on top; the samples to evaluate are those of data.train_users."""
    overrides = [f"model.name={ref.base}", "train.eval=false"]
    if max_samples is not None:
        overrides.append(f"data.max_samples={max_samples}")
    run = ref.run_dir
    if not task_class(task).by_users:  # a file: --data, else the run's data.eval_path
        cfg = load_config(run / RUN_CONFIG, overrides)
        path = data or cfg.data.eval_path
        if path is None:
            raise ConfigError(f"{run} has no data.eval_path: say which data to evaluate on with --data")
        cfg.data.path = str(path)
        return cfg
    if data is not None:
        overrides += [f"data.path={data}", "data.format=auto"]  # the run's own format may not be this one's
    if run is not None:
        cfg = load_config(run / RUN_CONFIG, overrides)
    elif data is None:
        raise ConfigError(f"{ref.base} is not a pigg run: say which data to evaluate on with --data")
    else:
        cfg = build_config({"model": {"name": ref.base}, "data": {"path": data}}, overrides)
    selected = users if users is not None else cfg.data.test_users
    if selected is None and _without_users(cfg):
        selected = "all"  # ScreenSpot, LLaMA-Factory, ...: every sample
    if selected is None:
        raise ConfigError(
            "which users? pass --users (e.g. --users 1-10)"
            + ("; the run has no data.test_users" if run else "")
        )
    cfg.data.train_users = selected
    return cfg


def _without_users(cfg: ExperimentConfig) -> bool:
    """Whether the evaluation data is in a format without users (anything but pigg's own)."""
    from pigg.data.readers.detect import detect_format

    fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(Path(cfg.data.path))
    return fmt != "pigg"


def evaluate_models(
    refs: list[ModelRef], task: Task, samples, modes, batch_size: int, loss: bool = False, embed_with="self"
) -> list[ModelResult]:
    """Each model loaded once, asked by each mode on the same samples, then released."""
    from pigg.evaluation.similarity import embedder

    anchor = next(r for r in refs if r.label != "base")
    embeds = None
    if task.embeds and embed_with != "self":
        embeds = embedder(base_of(anchor) if embed_with == "base" else resolve_model(embed_with))
    cfg = task.cfg
    results = []
    for ref in refs:
        agent = Agent.load(ref, max_new_tokens=cfg.eval.max_new_tokens, image_cache=cfg.data.image_cache)
        for mode in modes:
            result = evaluate(agent, task, samples, batch_size, mode, loss, embeds)
            print(task.headline(result))
            results.append(result)
        del agent
        gc.collect()
    return results


def run_eval(
    specs: list[str],
    adapter: str | None = None,
    user: int | None = None,
    data: str | None = None,
    users: str | None = None,
    out=None,
    max_samples: int | None = None,
    batch_size: int | None = None,
    radius: float | None = None,
    max_new_tokens: int | None = None,
    loss: bool = False,
    mode: str = "generate",
    metric: str = "click",
    embed_with: str = "self",
) -> Path:
    """`pigg eval`: resolve the models, read and check the samples once, evaluate every model on them,
    write the task's report; returns its JSON's path. `metric` similarity scores free-text answers (the
    describe task) whatever the run's task."""
    named = [resolve_model(s, adapter, user) for s in specs if s != "base"]
    if not named:
        raise ConfigError("'base' means the base model of the other models given; name at least one")
    refs = [base_of(named[0]) if s == "base" else named.pop(0) for s in specs]
    anchor = next(r for r in refs if r.label != "base")
    out = Path(out) if out is not None else (anchor.run_dir or Path("eval_out")) / "eval"
    name = "describe" if metric == "similarity" else run_task(anchor)
    cfg = eval_config(anchor, name, data, users, max_samples)
    if radius:
        cfg.eval.radius = radius
    task = task_for(cfg, name)
    cfg.eval.max_new_tokens = max_new_tokens or task.max_new_tokens or cfg.eval.max_new_tokens
    modes = MODES if mode == "both" else (mode,)
    if mode != "generate" and type(task).choices is Task.choices:
        raise ConfigError(
            f"--mode {mode}: scoring by likelihood is for tasks with fixed choices, such as classification "
            f"runs (task: classify); {name} answers are generated"
        )
    samples = prepare_data(cfg, run_dir=out, purpose="evaluate").train
    where = f"users {cfg.data.train_users}" if task.by_users else cfg.data.path
    print(f"evaluating {', '.join(r.label for r in refs)} on {len(samples)} samples of {where}")
    batch_size = batch_size or cfg.eval.batch_size
    results = evaluate_models(refs, task, samples, modes, batch_size, loss, embed_with)
    settings = {
        "task": name,
        "data": cfg.data.path,
        "users": cfg.data.train_users if task.by_users else None,
        "samples": len(samples),
        "modes": list(modes),
        "models": [r.__dict__ for r in refs],
        "batch_size": batch_size,
        "radius": cfg.eval.radius,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "loss": loss,
        "image_cache": cfg.data.image_cache,
        "embed_with": embed_with,
    }
    return task.report(results, samples, out, settings)
