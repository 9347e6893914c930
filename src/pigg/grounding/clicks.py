"""Answers read as clicks: the grounding side of inference (`pigg.infer.Agent` generates, this reads)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pigg.data.render import prompt_messages
from pigg.data.sample import Sample, image_size
from pigg.grounding.parse import parse_click
from pigg.infer import Agent
from pigg.models.coords import from_model


@dataclass
class Click:
    """One answer read as a click: the raw text, and the point in screenshot pixels (None: unreadable)."""

    raw: str
    point: tuple[float, float] | None
    size: tuple[int, int]


def read_click(agent: Agent, raw: str, size: tuple[int, int]) -> Click:
    parsed = parse_click(raw)
    if parsed is None:
        return Click(raw, None, size)
    point = from_model(parsed.point, size, agent.family, agent.processor.image_processor)
    return Click(raw, point, size)


def click(agent: Agent, image: Image.Image, instruction: str) -> Click:
    """Where to click on `image` for `instruction` (seed 001's test_model.py)."""
    prompt = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": instruction}],
        }
    ]
    raw = agent.generate_text(agent.prompt_inputs([prompt], [[image]]))[0]
    return read_click(agent, raw, image.size)


def click_samples(agent: Agent, samples: list[Sample], batch_size: int = 8, progress=None) -> list[Click]:
    """Batched greedy answers for the samples' prompts (their last answer is what is being predicted)."""
    clicks: list[Click] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [prompt_messages(agent.renderer.messages(s)) for s in chunk]
        images = [[agent.renderer.load_image(ref, s.base_dir) for ref in s.image_refs()] for s in chunk]
        raws = agent.generate_text(agent.prompt_inputs(prompts, images))
        # clicks are read in the screenshot's own pixels: a cached image is already resized, so the
        # size comes from the file's header
        sizes = [image_size(s.image_refs()[-1], s.base_dir) for s in chunk]
        clicks += [read_click(agent, raw, size) for raw, size in zip(raws, sizes, strict=True)]
        if progress:
            progress(len(clicks), len(samples))
    return clicks
