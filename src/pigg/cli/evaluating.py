"""Using a trained model: `pigg predict`, `pigg eval`, `pigg personalize`, `pigg bench-eval`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pigg.cli.apps import (
    AdapterOpt,
    EvalDataOpt,
    EvalUsersOpt,
    ModelOpt,
    Overrides,
    UserOpt,
    app,
)
from pigg.errors import PiggError


@app.command()
def predict(
    model: ModelOpt = None,
    image: Annotated[Path | None, typer.Option(help="the screenshot")] = None,
    prompt: Annotated[str | None, typer.Option(help='the instruction, e.g. "click the login button"')] = None,
    adapter: AdapterOpt = None,
    user: UserOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="PNG with the click drawn (default: ./<image>_click.png)")
    ] = None,
    max_new_tokens: int = 32,
):
    """Predict where to click on one screenshot: prints the answer and the point, draws it on a PNG."""
    from pigg.predict import predict_click

    if model is None or image is None or prompt is None:
        raise PiggError("pigg predict needs --model, --image and --prompt")
    result = predict_click(model, image, prompt, adapter, user, out, max_new_tokens)
    print(f"answer: {result.click.raw!r}")
    if result.click.point is None:
        print("click: none (the answer holds no point or box)")
    else:
        x, y = result.click.point
        print(f"click: ({x:.1f}, {y:.1f}) px on a {result.click.size[0]}x{result.click.size[1]} screenshot")
    print(result.png)


@app.command("eval")
def evaluate(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    user: UserOpt = None,
    compare: Annotated[
        str | None, typer.Option(help="comma-separated models on the same samples; 'base' is the runs' base")
    ] = None,
    data: EvalDataOpt = None,
    users: EvalUsersOpt = None,
    out: Annotated[Path | None, typer.Option(help="report folder (default: RUN/eval)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="screens per generation batch")] = None,
    radius: Annotated[
        float | None, typer.Option(help="hit radius as a fraction of the diagonal (no box)")
    ] = None,
    max_new_tokens: int | None = None,
    max_samples: int | None = None,
    loss: Annotated[bool, typer.Option("--loss", help="also compute evaluation loss")] = False,
    mode: Annotated[
        str,
        typer.Option(
            help="generate (answers read strictly), likelihood (the most likely of a task's fixed "
            "choices, e.g. classification's labels: no generation) or both"
        ),
    ] = "generate",
    metric: Annotated[
        str,
        typer.Option(
            help="the run's task (click for grounding), or similarity: score the answers as free text "
            "(task describe: seed 003's embedding distance, exact match and token F1)"
        ),
    ] = "click",
    embed_with: Annotated[
        str, typer.Option(help="--metric similarity: self (each model, as seed 003), base, or a model folder")
    ] = "self",
):
    """Evaluate a model, or several side by side (--compare base,RUN), on its run's task, with a report:
    grounding, click accuracy per user and kind; classify, accuracy, macro-F1, per-class scores, confusion
    PNG, throughput; describe, similarity, exact match and token F1."""
    if mode not in ("generate", "likelihood", "both"):
        raise PiggError(f"--mode {mode!r}: use generate, likelihood or both")
    if metric not in ("click", "similarity"):
        raise PiggError(f"--metric {metric!r}: use click or similarity")
    from pigg.evaluation.run import run_eval

    specs = [s.strip() for s in compare.split(",")] if compare else []
    if model is not None:
        specs.insert(0, model)
    if not specs:
        raise PiggError("pigg eval needs --model or --compare")
    path = run_eval(
        specs,
        adapter=adapter,
        user=user,
        data=data,
        users=users,
        out=out,
        max_samples=max_samples,
        batch_size=batch_size,
        radius=radius,
        max_new_tokens=max_new_tokens,
        loss=loss,
        mode=mode,
        metric=metric,
        embed_with=embed_with,
    )
    print(path)


@app.command()
def personalize(
    run: Annotated[Path, typer.Argument(help="the global run folder (LoRA or full)")],
    overrides: Overrides = None,
    budgets: Annotated[
        str | None,
        typer.Option(
            help="data-efficiency curve: also train each user on this many own samples, e.g. 5,10,20"
        ),
    ] = None,
):
    """Train, save and evaluate one LoRA adapter per user on top of a global run (RUN/users/<id>/): accuracy
    per kind, forgetting flags, cost per user, and with --budgets the data-efficiency curve."""
    from pigg.personalize import personalize as run_personalize

    extra = []
    if budgets:
        try:
            extra = [f"personalize.budgets=[{','.join(str(int(b)) for b in budgets.split(','))}]"]
        except ValueError:
            raise PiggError(f"--budgets {budgets!r}: write sample counts like 5,10,20") from None
    print(run_personalize(run, [*(overrides or []), *extra]))


@app.command("bench-eval")
def bench_eval(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    user: UserOpt = None,
    data: EvalDataOpt = None,
    users: EvalUsersOpt = None,
    batch_sizes: Annotated[str, typer.Option(help="comma-separated; the first is the baseline")] = "1,16",
    repeat: Annotated[int, typer.Option(help="timed passes per batch size, interleaved")] = 2,
    max_samples: Annotated[int | None, typer.Option(help="screens per pass")] = 64,
    max_new_tokens: int | None = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("bench_eval"),
    gpus: Annotated[str | None, typer.Option(help="GPU ids to use, e.g. 0")] = None,
):
    """Eval throughput, one screenshot at a time vs batched, on the same samples: screens/s, tokens/s,
    peak memory, accuracy and how many answers batching changed."""
    from pigg.train.build import select_gpus

    select_gpus(gpus)
    from pigg.evaluation.speed import bench_eval as run_bench_eval

    if model is None:
        raise PiggError("pigg bench-eval needs --model")
    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
    except ValueError:
        raise PiggError(f"--batch-sizes: {batch_sizes!r} is not a comma-separated list of integers") from None
    path = run_bench_eval(
        model, adapter, user, data, users, sizes, repeat, max_samples, max_new_tokens, out,
        progress=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    print(path.with_name("bench_eval.md").read_text())
    print(path)
