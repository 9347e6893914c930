"""The tasks pigg trains and evaluates, by the name a config's `task:` gives them.

A task is one module with a `Task` subclass (tasks.base) and one line here: "module:Class", imported when
a config names it.
"""

from __future__ import annotations

import difflib
import importlib

from pigg.config import ExperimentConfig
from pigg.errors import ConfigError
from pigg.tasks.base import Task

TASKS = {
    "grounding": "pigg.tasks.grounding:GroundingTask",  # clicks on screenshots (seeds 000-003)
    "classify": "pigg.tasks.classify:ClassifyTask",  # text classification (seed 004)
    "describe": "pigg.tasks.describe:DescribeTask",  # free-text answers (seed 003's descriptions)
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        near = difflib.get_close_matches(name, list(TASKS), n=1)
        raise ConfigError(
            f"task: {name} is not a task pigg has ({', '.join(TASKS)})"
            + (f"; did you mean {near[0]}?" if near else "")
        )
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def task_for(cfg: ExperimentConfig, name: str | None = None) -> Task:
    """The task `cfg` names (or `name`), configured by `cfg`."""
    return task_class(name or cfg.task)(cfg)
