"""A tiny description task (seed 003's free-text answers in miniature), written in LLaMA-Factory's format.

Each picture is one background colour with one white shape on it, and its description says exactly that
("A white circle on a red background."), so what a tiny model learns is measurable by seed 003's
similarity score, exact match and token F1. The rows are openai-style messages with an `<image>`
placeholder and an `images` list, registered in a `dataset_info.json`: the format LLaMA-Factory users have.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (225, 205, 40)}
SHAPES = ("circle", "square")
PROMPT = "<image>Describe the picture."


def describe(shape: str, colour: str) -> str:
    return f"A white {shape} on a {colour} background."


def synthesize_descriptions(out: str | Path, count: int, seed: int = 0, size: int = 128) -> Path:
    """Write `count` pictures and `describe.json` + `dataset_info.json` (entry "describe") into `out`;
    return the folder (a `data.path` pigg reads as LLaMA-Factory data)."""
    rng = random.Random(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        image = Image.new("RGB", (size, size), COLOURS[colour])
        half = rng.randint(size // 5, size // 3)
        cx, cy = rng.randint(half, size - half), rng.randint(half, size - half)
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(
            (cx - half, cy - half, cx + half, cy + half), fill="white"
        )
        name = f"images/describe_{index:05d}.png"
        image.save(out / name)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": PROMPT},
                    {"role": "assistant", "content": describe(shape, colour)},
                ],
                "images": [name],
            }
        )
    (out / "describe.json").write_text(json.dumps(rows, indent=1))
    info = {
        "describe": {
            "file_name": "describe.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    }
    (out / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return out
