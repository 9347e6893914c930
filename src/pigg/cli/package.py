"""About the installation: `pigg env` and `pigg recipes`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from pigg.cli.apps import app, recipes_app
from pigg.recipes import recipe_name


@app.command("env")
def environment(as_json: Annotated[bool, typer.Option("--json", help="print it as JSON")] = False):
    """What this installation runs: pigg, Python, torch and its CUDA/ROCm build, the libraries pigg
    trains with, GPUs with memory, thread settings. Paste it into a bug report."""
    from pigg.environment import collect, describe

    report = collect()
    print(json.dumps(report, indent=2) if as_json else describe(report))


@recipes_app.callback(invoke_without_command=True)
def recipes_list(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="print them as JSON")] = False
):
    """List the shipped recipes (name, model, how it trains, summary) and launch configs; every command
    that takes a CONFIG takes a recipe's name."""
    if ctx.invoked_subcommand:
        return
    from dataclasses import asdict

    from pigg.recipes import RECIPES, launch_config_paths, recipe_paths

    infos = [describe_recipe(p) for p in recipe_paths()]
    launch = [p.relative_to(RECIPES).as_posix() for p in launch_config_paths()]
    if as_json:
        print(json.dumps({"recipes": [asdict(i) for i in infos], "launch_configs": launch}, indent=2))
        return
    rows = [("recipe", "model", "method", "about"), *((i.name, i.model, i.method, i.about) for i in infos)]
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    print(f"\nlaunch configs (accelerate launch --config_file, train.deepspeed): {', '.join(launch)}")
    print("`pigg train NAME` trains one as shipped; `pigg recipes copy NAME [DEST]` writes a copy to edit")


@recipes_app.command("copy")
def recipes_copy(
    name: Annotated[str, typer.Argument(help="a recipe or launch config, e.g. global_lora, accelerate/fsdp")],
    dest: Annotated[
        Path, typer.Argument(help="a file, or a folder to copy it into (made if need be)")
    ] = Path("."),
):
    """Write an editable copy of a shipped recipe or launch config; never overwrites."""
    from pigg.recipes import copy

    for path in copy(name, dest):
        print(path)


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    about: str
    model: str
    method: str


def describe_recipe(path: Path) -> RecipeInfo:
    """What `pigg recipes` shows: the summary line, the model, and how it trains."""
    from pigg.config import load_config

    first = path.read_text().splitlines()[0] if path.stat().st_size else ""
    about = first.lstrip("#").strip() if first.startswith("#") else ""
    cfg = load_config(path)
    method = "qlora (nf4)" if cfg.model.quantization else cfg.train.method
    if cfg.train.method == "lora" or cfg.model.quantization:
        method += f" r{cfg.lora.r}/a{cfg.lora.alpha:g}"
    if cfg.llm.layers != "all":
        method += f", LLM layers {cfg.llm.layers}"
    if cfg.vision.method != "frozen":
        method += f", vision {cfg.vision.method} ({cfg.vision.blocks})"
    parallel = {"fsdp": "FSDP", "deepspeed": f"DeepSpeed {cfg.train.deepspeed}", "model": "model parallel"}
    method += f", {parallel[cfg.train.parallel]}" if cfg.train.parallel in parallel else ""
    if cfg.train.stage != "sft":
        method += f", {cfg.train.stage.upper()} ({cfg.rl.num_generations} answers per prompt)"
    if cfg.task != "grounding":
        method += f", task {cfg.task}"
    return RecipeInfo(recipe_name(path), about, cfg.model.name, method)
