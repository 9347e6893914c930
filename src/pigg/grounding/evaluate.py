"""`pigg eval`: click accuracy of one or more models on the same samples, and evaluation loss.

Every model sees exactly the same samples in the same order; the prompt is rendered by the same Renderer
as in training (minus the answer), answers come from batched greedy generation, and evaluation loss goes
through the training collator, so train and eval can never disagree about what a sample is.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from pigg.data.render import IGNORE_INDEX, Renderer
from pigg.data.sample import Sample
from pigg.grounding.clicks import Click, click_samples
from pigg.grounding.metrics import DEFAULT_RADIUS, ClickScore, breakdown, score_click
from pigg.infer import Agent, ModelRef
from pigg.progress import progress_bar
from pigg.train.loss import causal_lm_loss


@dataclass
class EvalSettings:
    batch_size: int = 16
    radius: float = DEFAULT_RADIUS
    max_new_tokens: int = 32
    loss: bool = False  # also compute evaluation loss through the training collator
    image_cache: str | bool | None = None  # data.image_cache: screenshots decoded and resized once


@dataclass
class ModelEval:
    """One model's results on one sample set."""

    label: str
    scores: list[ClickScore]
    loss: float | None = None
    seconds: float = 0.0

    def summary(self) -> dict:
        out = breakdown(self.scores)
        out["eval_loss"] = self.loss
        out["screens_per_second"] = len(self.scores) / self.seconds if self.seconds else None
        return out


def score_clicks(samples: list[Sample], clicks: list[Click], radius: float) -> list[ClickScore]:
    scores = []
    for sample, click in zip(samples, clicks, strict=True):
        if sample.target is None:
            raise ValueError(f"{sample.source}: no target (point or box) to score against")
        hit, distance, fraction = score_click(click.point, sample.target, click.size, radius)
        scores.append(
            ClickScore(
                source=sample.source,
                user_id=sample.user_id,
                kind=str(sample.meta.get("kind", "all")),
                raw=click.raw,
                point=click.point,
                target=sample.target.point,
                box=sample.target.box,
                size=click.size,
                hit=hit,
                distance_px=distance,
                distance_frac=fraction,
                categories=dict(sample.meta.get("categories") or {}),
            )
        )
    return scores


def eval_loss(model, renderer: Renderer, samples: list[Sample], batch_size: int) -> float:
    """Mean loss per answer token, over all samples (the same number the Trainer's eval reports)."""
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            batch = renderer.collate(samples[start : start + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            count = int((labels[:, 1:] != IGNORE_INDEX).sum())
            # the output layer at answer positions only, as in training (pigg.train.loss)
            loss, _ = causal_lm_loss(model, {**batch, "use_cache": False}, labels)
            total += float(loss) * count
            tokens += count
    model.train(was_training)
    return total / tokens


def evaluate_agent(agent: Agent, samples: list[Sample], settings: EvalSettings) -> ModelEval:
    """Click accuracy (and loss, if asked) of a loaded agent."""
    agent.max_new_tokens = settings.max_new_tokens
    with progress_bar(len(samples), f"eval {agent.label}", unit="screens") as advance:
        started = time.perf_counter()
        clicks = click_samples(agent, samples, settings.batch_size, progress=advance)
        seconds = time.perf_counter() - started
    result = ModelEval(agent.label, score_clicks(samples, clicks, settings.radius), seconds=seconds)
    if settings.loss:
        result.loss = eval_loss(agent.model, agent.renderer, samples, settings.batch_size)
    return result


def evaluate_models(refs: list[ModelRef], samples: list[Sample], settings: EvalSettings) -> list[ModelEval]:
    """Each model in turn, loaded once, evaluated on the same samples, then released."""
    results = []
    for ref in refs:
        agent = Agent.load(ref, image_cache=settings.image_cache)
        results.append(evaluate_agent(agent, samples, settings))
        del agent
        gc.collect()
    return results


def _eval_config(ref: ModelRef, data: str | None, users: str | None, max_samples: int | None):
    """The data settings of an evaluation: the run's own config where the model is a pigg run (its
    test users by default), with what the command line says on top."""
    from pigg.config import build_config, load_config
    from pigg.errors import ConfigError
    from pigg.train.run import RUN_CONFIG

    overrides = [f"model.name={ref.base}", "train.eval=false"]
    if data is not None:
        overrides += [f"data.path={data}", "data.format=auto"]  # the run's own format may not be this one's
    if max_samples is not None:
        overrides.append(f"data.max_samples={max_samples}")
    run = ref.run_dir
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


def _without_users(cfg) -> bool:
    """Whether the evaluation data is in a format without users (anything but pigg's own)."""
    from pathlib import Path

    from pigg.data.formats import detect_format

    fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(Path(cfg.data.path))
    return fmt != "pigg"


def _run_task(ref: ModelRef) -> str:
    """The task of the pigg run behind `ref` (grounding when it is no pigg run)."""
    import yaml

    from pigg.train.run import RUN_CONFIG

    run = ref.run_dir
    if run is None or not (run / RUN_CONFIG).exists():
        return "grounding"
    return (yaml.safe_load((run / RUN_CONFIG).read_text()) or {}).get("task", "grounding")


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
):
    """`pigg eval`: resolve the models ("base" = the base of the others), read and check the samples
    once, evaluate every model on them, write the report; returns the JSON's path."""
    from pathlib import Path

    from pigg.errors import ConfigError
    from pigg.grounding.report import write_report
    from pigg.infer import base_of, resolve_model
    from pigg.train.run import prepare_data

    named = [resolve_model(s, adapter, user) for s in specs if s != "base"]
    if not named:
        raise ConfigError("'base' means the base model of the other models given; name at least one")
    refs = [base_of(named[0]) if s == "base" else named.pop(0) for s in specs]
    anchor = next(r for r in refs if r.label != "base")
    out = Path(out) if out is not None else (anchor.run_dir or Path("eval_out")) / "eval"
    if _run_task(anchor) == "classify":
        from pigg.classification.evaluate import classify_config, run_classify_eval

        cfg = classify_config(anchor, data, max_samples)
        samples = prepare_data(cfg, run_dir=out, purpose="evaluate").train
        print(f"evaluating {', '.join(r.label for r in refs)} on {len(samples)} samples of {cfg.data.path}")
        modes = ("generate", "likelihood") if mode == "both" else (mode,)
        return run_classify_eval(refs, cfg, samples, out, modes, batch_size or cfg.eval.batch_size)
    if mode != "generate":
        raise ConfigError(f"--mode {mode}: scoring by likelihood is for classification runs (task: classify)")
    cfg = _eval_config(anchor, data, users, max_samples)
    settings = EvalSettings(
        batch_size=batch_size or cfg.eval.batch_size,
        radius=radius or cfg.eval.radius,
        max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens,
        loss=loss,
        image_cache=cfg.data.image_cache,
    )
    samples = prepare_data(cfg, run_dir=out, purpose="evaluate").train
    if not samples:
        raise ConfigError(f"no samples for users {cfg.data.train_users} in {cfg.data.path}")
    print(
        f"evaluating {', '.join(r.label for r in refs)} on {len(samples)} samples of users {cfg.data.train_users}"
    )
    if metric == "similarity":  # free-text answers (descriptions, VQA): seed 003's score
        from pigg.freetext import evaluate_freetext

        return evaluate_freetext(refs, samples, out, embed_with, settings.batch_size, max_new_tokens or 64)
    results = evaluate_models(refs, samples, settings)
    for result in results:
        o = result.summary()["overall"]
        print(
            f"{result.label}: accuracy {100 * o['accuracy']:.1f}% ({o['hits']}/{o['samples']}), "
            f"parse failures {o['parse_failures']}"
            + (f", eval loss {result.loss:.4f}" if result.loss else "")
        )
    described = {"data": cfg.data.path, "users": cfg.data.train_users, "models": [r.__dict__ for r in refs]}
    return write_report(results, samples, out, {**described, **settings.__dict__})
