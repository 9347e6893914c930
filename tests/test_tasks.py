"""The task interface: every registered task is complete, and a new task (tests/count_task.py) trains,
evaluates and reports through the same commands as the built-in ones, from one module and one registry line."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from pigg.cli import app
from pigg.config import build_config
from pigg.errors import ConfigError
from pigg.tasks import TASKS, task_class, task_for

runner = CliRunner()


def test_every_registered_task_implements_the_interface_and_unknown_names_are_refused():
    cfg = build_config({"model": {"name": "m"}, "data": {"path": "d"}}, [])
    for name in TASKS:
        task = task_class(name)(cfg)  # abstract methods left out would raise TypeError here
        assert task.name == name
    with pytest.raises(ConfigError, match="task: groundin is not a task pigg has .*did you mean grounding"):
        task_for(cfg, "groundin")


def count_screens(folder, users: int, per_user: int, seed: int = 0):
    """pigg JSONL: white screens with 1-4 grey buttons, asked how many there are."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    lines = []
    for user in range(1, users + 1):
        for i in range(per_user):
            count = rng.randint(1, 4)
            image = Image.new("RGB", (224, 160), "white")
            draw = ImageDraw.Draw(image)
            for b in range(count):
                x = 10 + 52 * b + rng.randint(0, 6)
                draw.rectangle([x, 60, x + 40, 84], fill=(120, 120, 120))
            name = f"u{user}_{i}.png"
            image.save(folder / name)
            lines.append(
                {
                    "user_id": user,
                    "messages": [
                        {"role": "user", "content": [{"type": "image", "image": name},
                                                     {"type": "text", "text": "How many buttons are there?"}]},
                        {"role": "assistant", "content": str(count)},
                    ],
                }
            )  # fmt: skip
    path = folder / "screens.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_new_task_trains_evaluates_and_reports_through_the_same_commands(tiny_model, tmp_path, monkeypatch):
    data = count_screens(tmp_path / "data", users=4, per_user=12)
    run = tmp_path / "run"
    config = tmp_path / "count.yaml"
    raw = {
        "task": "count",
        "model": {"name": str(tiny_model)},
        "data": {"path": str(data), "train_users": "1-3", "test_users": "4", "max_length": 256},
        "train": {"method": "full", "output_dir": str(run), "log_dir": str(tmp_path / "logs"),
                  "learning_rate": 3e-3, "batch_size": 6, "max_steps": 12, "logging_steps": 1,
                  "save_steps": 100, "gradient_checkpointing": False, "report_to": []},
        "eval": {"batch_size": 6, "max_new_tokens": 4},
    }  # fmt: skip
    config.write_text(yaml.safe_dump(raw))

    # unregistered, the name is refused when the command starts, before any model loads
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code != 0 and "task: count is not a task pigg has" in str(
        result.exception or result.output
    )

    monkeypatch.setitem(TASKS, "count", "count_task:CountTask")  # the one registry line
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "pigg_run.json").read_text())
    assert summary["steps"] == 12 and summary["train_samples"] == 36
    assert summary["last_loss"] < summary["first_loss"] / 2  # a digit answer is quickly learnt

    result = runner.invoke(app, ["eval", "--compare", f"base,{run}"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval" / "count.json").read_text())
    assert report["settings"]["task"] == "count" and report["settings"]["users"] == "4"
    assert set(report["models"]) == {"base", "run"}
    for model, metrics in report["models"].items():
        rows = [
            json.loads(line) for line in (run / "eval" / f"counts_{model}.jsonl").read_text().splitlines()
        ]
        assert len(rows) == metrics["samples"] == 12
        # the expected numbers are the answers of user 4's lines, in order; the accuracy is recounted here
        wanted = [
            int(json.loads(line)["messages"][1]["content"]) for line in data.read_text().splitlines()[36:]
        ]
        assert [r["expected"] for r in rows] == wanted
        assert metrics["accuracy"] == sum(r["answered"] == r["expected"] for r in rows) / 12
