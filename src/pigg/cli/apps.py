"""The command groups and the options several commands share."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fine-tune vision-language models into GUI agents."
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and generate data.")
model_app = typer.Typer(no_args_is_help=True, help="Build embedded tiny models.")
recipes_app = typer.Typer(help="The recipes shipped with pigg: list them, copy one to edit.")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(recipes_app, name="recipes")


def _print_version(value: bool) -> None:
    if value:
        from pigg.environment import pigg_version

        print(f"pigg {pigg_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print pigg's version and exit"
        ),
    ] = False,
):
    """Fine-tune vision-language models into GUI agents."""


UserOpt = Annotated[int | None, typer.Option("--user", help="apply this user's adapter from RUN/users/ID")]
EvalDataOpt = Annotated[str | None, typer.Option(help="data folder or .jsonl (default: the run's data.path)")]
EvalUsersOpt = Annotated[str | None, typer.Option(help="user ids, e.g. 1-10 (default: the run's test users)")]
ConfigArg = Annotated[
    str, typer.Argument(help="a recipe's name (`pigg recipes`: global_lora, seed003/qlora) or a YAML file")
]
Overrides = Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="hub id, model folder, pigg run folder or adapter folder")
]
AdapterOpt = Annotated[str | None, typer.Option(help="a LoRA adapter folder to apply on top of --model")]
