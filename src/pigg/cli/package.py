"""About the installation: `pigg env` and `pigg recipes`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pigg.cli.apps import app, recipes_app


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

    from pigg.config import describe_recipe
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
