"""The `pigg` command line. No logic lives here: each command parses its options and calls one function.
The commands live by what they are about (package: env and recipes; training, data, evaluating,
serving); this module holds the entry point, `main`.

Heavy imports (torch, transformers) happen inside the commands, so `--gpus` is applied before CUDA starts
and `pigg --help` is instant.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from pigg.cli.apps import app

# each module registers its commands, in the order `pigg --help` lists them
# isort: off
from pigg.cli import package  # noqa: F401
from pigg.cli import training  # noqa: F401
from pigg.cli import data  # noqa: F401
from pigg.cli import evaluating  # noqa: F401
from pigg.cli import serving  # noqa: F401

# isort: on
from pigg.errors import PiggError


def _resume_path_option(argv: list[str]) -> list[str]:
    """`--resume PATH` (an existing folder) means `--resume-from PATH`; a bare `--resume` stays a flag."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--resume" and Path(out[i + 1]).is_dir():
            out[i] = "--resume-from"
    return out


REPORT_TO = "https://github.com/pigg-project/pigg/issues"


def main() -> None:
    # transformers' own Trainer still calls its deprecated name: noise in every run's log
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # peft reads the base's config.json on save to see whether the vocabulary grew; the base of an adapter
    # trained from a LoRA run (model.init_from, a user's adapter) is that run, with none; pigg never resizes it
    warnings.filterwarnings(
        "ignore", message="Could not find a config file in .* vocabulary", category=UserWarning
    )
    args = sys.argv[1:]
    debug = "--debug" in args or os.environ.get("PIGG_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    from pigg.train.launch import interrupt_once_under_torchrun

    interrupt_once_under_torchrun()
    try:
        app(args=_resume_path_option(args))
    except PiggError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:  # the last line of defence: one line, not a traceback
        if debug:
            raise
        where = getattr(exc, "pigg_input", None)
        print(
            f"error: unexpected {type(exc).__name__}: {str(exc)[:500]}"
            + (f"\n  while reading {where}" if where else "")
            + f"\n  This is a bug in pigg: please report it at {REPORT_TO} with the command; run it again"
            " with --debug (or PIGG_DEBUG=1) for the traceback.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
