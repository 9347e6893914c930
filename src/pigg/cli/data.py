"""`pigg data ...` (inspect, validate, generate) and `pigg model ...` (tiny and random-weight models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pigg.cli.apps import (
    ConfigArg,
    Overrides,
    data_app,
    model_app,
)
from pigg.errors import PiggError


@data_app.command("show")
def data_show(
    config: ConfigArg,
    overrides: Overrides = None,
    sample: Annotated[int, typer.Option(help="index among the selected training samples")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print input_ids and labels as JSON")] = False,
):
    """Render one sample as the trainer sees it; trained tokens are shown between [[ and ]]."""
    from pigg.config import load_config
    from pigg.data.show import show_sample
    from pigg.train.build import prepare_data

    data = prepare_data(load_config(config, overrides), check=False)
    if not 0 <= sample < len(data.train):
        raise PiggError(f"--sample {sample} is out of range: {len(data.train)} samples selected")
    shown = show_sample(data.train[sample], data.renderer)
    if as_json:
        print(json.dumps(shown.to_json()))
        return
    print(f"# {shown.source}: {len(shown.input_ids)} tokens, {shown.trained_tokens} trained (between [[ ]])")
    print(shown.text)


@data_app.command("validate")
def data_validate(config: ConfigArg, overrides: Overrides = None):
    """Check the whole training (and eval) data set and list every problem."""
    from pigg.config import load_config
    from pigg.train.build import prepare_data

    data = prepare_data(load_config(config, overrides))
    print(
        f"ok: {len(data.train)} training samples" + (f", {len(data.eval)} eval samples" if data.eval else "")
    )


@data_app.command("stats")
def data_stats(
    config: ConfigArg,
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="folder for data_stats.json and the PNGs")] = Path("data_stats"),
):
    """Counts per class (or user) and sample lengths in tokens, as JSON and PNG plots, for the training
    data and the evaluation data (data.eval_path, test users or the held-out fraction)."""
    from pigg.config import load_config
    from pigg.data.stats import data_stats as write_stats
    from pigg.data.validate import validate
    from pigg.train.build import prepare_data

    cfg = load_config(config, overrides)
    cfg.train.eval = any(
        v is not None for v in (cfg.data.eval_path, cfg.data.test_users, cfg.data.eval_fraction)
    )
    data = prepare_data(cfg, run_dir=out)
    splits = {"train": (data.train, [t + i for t, i in data.tokens()])}
    if data.eval:
        tokens = validate(data.eval, data.renderer, cfg.data.max_length).tokens
        splits["eval"] = (data.eval, [t + i for t, i in tokens])
    labels = cfg.classify.labels if cfg.task == "classify" else None
    path = write_stats(splits, out, cfg.data.max_length, labels)
    for name, split in json.loads(path.read_text())["splits"].items():
        t = split["tokens"]
        print(
            f"{name}: {t['samples']} samples; tokens mean {t['mean']}, p50 {t['p50']}, p95 {t['p95']}, "
            f"max {t['max']}; " + ", ".join(f"{k} {v}" for k, v in split["counts"].items())
        )
    print(path)


@data_app.command("synth-news")
def data_synth_news(
    out: Annotated[Path, typer.Argument(help="the JSONL file to write")],
    count: Annotated[int, typer.Option(help="articles (the 4 classes in equal shares)")] = 1000,
    seed: int = 0,
):
    """Synthetic 4-class news articles in seed 004's chat rows, with its length spread (for task: classify)."""
    from pigg.data.synth.news import synthesize_news

    print(f"wrote {count} articles to {synthesize_news(out, count, seed)}")


@data_app.command("synth-describe")
def data_synth_describe(
    out: Annotated[Path, typer.Argument(help="folder for the pictures, describe.json and dataset_info.json")],
    count: Annotated[int, typer.Option(help="pictures")] = 200,
    seed: int = 0,
):
    """A tiny description task in LLaMA-Factory's format (pictures whose description says what is drawn),
    for free-text training and `pigg eval --metric similarity`."""
    from pigg.data.synth.describe import synthesize_descriptions

    print(f"wrote {count} described pictures to {synthesize_descriptions(out, count, seed)}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="folder to write user_<id>.pkl files and images/ into")],
    users: Annotated[int, typer.Option(help="number of users (ids 1..N)")] = 10,
    per_user: Annotated[int, typer.Option(help="samples per user")] = 20,
    habit_fraction: Annotated[float, typer.Option(help="share of samples that use a personal habit")] = 0.3,
    seed: int = 0,
    layout: Annotated[
        str,
        typer.Option(
            help="random: a button on any cell of a 3x3 grid; fixed: each label on its own cell; jitter: "
            "buttons and icons of varied sizes anywhere in their cells; free: elements of varied sizes "
            "at continuous positions"
        ),
    ] = "random",
    others: Annotated[
        str, typer.Option(help="free layout: how many other elements share a target's screen, e.g. 1-3 or 0")
    ] = "1-3",
    screen: Annotated[
        list[str] | None, typer.Option(help="screenshot size WxH, e.g. 1280x800 (repeatable; default: mixed)")
    ] = None,
):
    """Generate synthetic GUI screenshots with instructions, answers and per-user habits."""
    import re

    from pigg.data.synth.screens import synthesize

    if layout not in ("random", "fixed", "jitter", "free"):
        raise PiggError(f"--layout {layout!r}: use random, fixed, jitter or free")
    counts = re.fullmatch(r"(\d+)(?:-(\d+))?", others.strip())
    if not counts or int(counts[2] or counts[1]) < int(counts[1]):
        raise PiggError(f"--others {others!r}: write a count or a range, e.g. 0 or 1-3")
    low, high = int(counts[1]), int(counts[2] or counts[1])
    sizes = []
    for text in screen or []:
        match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
        if not match or min(int(match[1]), int(match[2])) < 64:
            raise PiggError(f"--screen {text!r}: write width x height in pixels, e.g. 1280x800 (64 or more)")
        sizes.append((int(match[1]), int(match[2])))
    path = synthesize(out, users, per_user, habit_fraction, seed, layout, sizes or None, others=(low, high))
    print(f"wrote {users} users x {per_user} samples to {path}")


@model_app.command("tiny")
def model_tiny(
    family: Annotated[
        str, typer.Argument(help="qwen3-vl, qwen2.5-vl, idefics3, idefics2, or the text-only qwen2.5, qwen3")
    ],
    out: Annotated[Path, typer.Argument(help="folder for the Hugging Face model")],
    seed: int = 0,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            help="a real model folder whose tokenizer, template and processor (full vocabulary) to use"
        ),
    ] = None,
):
    """Build a tiny random-weight model of a real architecture, with its own tokenizer and template (or a
    real model's, with --tokenizer)."""
    from pigg.data.synth.news import vocabulary
    from pigg.models.tiny import build_tiny

    folder = build_tiny(
        family, out, seed, tokenizer=str(tokenizer) if tokenizer else None, extra_words=vocabulary()
    )
    print(f"wrote tiny {family} model to {folder}")


@model_app.command("random")
def model_random(
    source: Annotated[str, typer.Argument(help="a folder or hub id with config.json and the processor")],
    out: Annotated[Path, typer.Argument(help="new folder for the Hugging Face model")],
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32")] = "bfloat16",
    device: Annotated[str, typer.Option(help="where to initialise the weights (cuda is fastest)")] = "cpu",
    seed: int = 0,
):
    """Build a full-size model with random weights from a config (no weights needed), for benchmarks."""
    from pigg.models.tiny import build_random

    if dtype not in ("bfloat16", "float16", "float32"):
        raise PiggError(f"--dtype {dtype!r}: use bfloat16, float16 or float32")
    print(f"wrote a random-weight copy of {source} to {build_random(source, out, dtype, device, seed)}")
