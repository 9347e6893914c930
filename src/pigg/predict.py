"""`pigg predict`: one screenshot and one instruction → the model's answer and the click, drawn on a PNG
(seed 001's test_model.py, for any model, run, adapter or user)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import ImageDraw

from pigg.data.sample import load_image
from pigg.infer import Agent, resolve_model
from pigg.tasks.grounding import Click, to_click


@dataclass
class Prediction:
    click: Click
    png: Path


def click(agent: Agent, image, instruction: str) -> Click:
    """Where to click on `image` for `instruction` (seed 001's test_model.py)."""
    prompt = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": instruction}],
        }
    ]
    raw = agent.generate_text(agent.prompt_inputs([prompt], [[image]]))[0]
    return to_click(raw, image.size, agent.renderer)


def draw_click(image, click: Click, path: Path) -> Path:
    """The screenshot with a red ring and cross at the click, and the raw answer in the corner."""
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    r = max(8, round(0.015 * max(canvas.size)))
    if click.point is not None:
        x, y = click.point
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 0, 0), width=max(2, r // 4))
        draw.line([x - 2 * r, y, x + 2 * r, y], fill=(255, 0, 0), width=2)
        draw.line([x, y - 2 * r, x, y + 2 * r], fill=(255, 0, 0), width=2)
    draw.rectangle([0, 0, canvas.width, 2 * r + 4], fill=(0, 0, 0))
    draw.text((4, 2), f"answer: {click.raw.strip()[:120]}", fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def predict_click(
    model: str,
    image_path: Path,
    prompt: str,
    adapter: str | None = None,
    user: int | None = None,
    out: Path | None = None,
    max_new_tokens: int = 32,
) -> Prediction:
    image = load_image(str(image_path))
    agent = Agent.load(resolve_model(model, adapter, user), max_new_tokens=max_new_tokens)
    answer = click(agent, image, prompt)
    png = out if out is not None else Path(f"{Path(image_path).stem}_click.png")
    return Prediction(answer, draw_click(image, answer, png))
