"""What a task is: what a sample asks and expects, how an answer is read and scored, what the scores add
up to, and the report people read.

A task is pure: functions of samples, text and the renderer (which says how this model family writes
prompts and answers, e.g. its click coordinates); it never loads or runs a model. How an answer is
obtained from a model (generation, or the likelihood of each of a task's fixed choices) is evaluation's
business (`pigg.evaluation`); training reads the task's samples; a reward is built from `Score.value`.

Adding a task is one module with a `Task` subclass and one line in `pigg.tasks.TASKS`
(docs/architecture.md walks through one).
"""

from __future__ import annotations

import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pigg.config import ExperimentConfig, parse_users
from pigg.data.readers import read_samples
from pigg.data.readers.rows import ReadResult
from pigg.data.render import Renderer, prompt_messages
from pigg.data.sample import Sample


class Score(Protocol):
    """One sample's scores: `value` is its headline number in [0, 1] (a hit, the right label): the number
    every metric counts and a reward is built from."""

    @property
    def value(self) -> float: ...

    def to_json(self) -> dict: ...


@dataclass
class Throughput:
    """How fast a pass answered: items/s over the whole pass; a sample's latency is the time of the batch it
    was answered in, so mean / p50 / p95 latency grow with the batch while items/s rises; tokens/s counts
    prompt and generated tokens (padding excluded)."""

    items: int
    batch_size: int
    seconds: float
    items_per_second: float
    latency_ms_mean: float
    latency_ms_p50: float
    latency_ms_p95: float
    prompt_tokens: int
    generated_tokens: int
    tokens_per_second: float

    @classmethod
    def of(cls, batches: list[tuple[int, float]], batch_size: int, prompt: int, generated: int) -> Throughput:
        """From (items, seconds) per batch: every item of a batch waited the batch's time."""
        latencies = sorted(seconds * 1000 for items, seconds in batches for _ in range(items))
        total = sum(seconds for _, seconds in batches)
        items = len(latencies)
        return cls(
            items=items,
            batch_size=batch_size,
            seconds=round(total, 4),
            items_per_second=round(items / total, 3) if total else 0.0,
            latency_ms_mean=round(statistics.fmean(latencies), 2),
            latency_ms_p50=round(_percentile(latencies, 50), 2),
            latency_ms_p95=round(_percentile(latencies, 95), 2),
            prompt_tokens=prompt,
            generated_tokens=generated,
            tokens_per_second=round((prompt + generated) / total, 1) if total else 0.0,
        )


def _percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values, linear between neighbours (numpy's default)."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class ModelResult:
    """One model's scored answers on one sample set, by one mode (generate, likelihood)."""

    model: str
    scores: list  # one Score per sample, in the samples' order
    metrics: Any = None  # the task's aggregate of the scores
    mode: str = "generate"
    loss: float | None = None  # evaluation loss through the training collator, when asked
    seconds: float = 0.0  # the whole pass, reading included
    throughput: Throughput | None = None

    @property
    def name(self) -> str:
        return self.model if self.mode == "generate" else f"{self.model} ({self.mode})"


class Task(ABC):
    """One task, configured by the experiment's config (`task:` names it)."""

    name: ClassVar[str]
    unit: ClassVar[str] = "samples"  # what one sample is called in progress bars and reports
    # how evaluation picks its samples: by user (data.test_users, --users) or a file (data.eval_path)
    by_users: ClassVar[bool] = True
    # whether scoring also needs answer and reference embedded by a model (seed 003's similarity), which
    # evaluation computes and hands to `Score.similarity`
    embeds: ClassVar[bool] = False
    # new tokens an answer may take when the command line does not say (None: the config's eval section)
    max_new_tokens: ClassVar[int | None] = None

    def __init__(self, cfg: ExperimentConfig | None = None):
        self.cfg = cfg  # None: a task that only reads answers (parse), with no settings to score by

    # ---- the samples and what they ask

    def read(self, path: str, users: str | None) -> ReadResult:
        """The samples of `path` as this task trains and evaluates on them (users: a data.train_users spec)."""
        data = self.cfg.data
        return read_samples(path, parse_users(users), data.format, data.dataset, data.images)

    def prompt(self, sample: Sample, renderer: Renderer) -> tuple[list[dict], list]:
        """The prompt messages (training's rendering, minus the answer) and their decoded images."""
        images = [renderer.load_image(ref, sample.base_dir) for ref in sample.image_refs()]
        return prompt_messages(renderer.messages(sample)), images

    def choices(self, sample: Sample, renderer: Renderer) -> list[str] | None:
        """The answer texts a sample can have, when they are a fixed few (likelihood mode scores each);
        None: open answers, generation only."""
        return None

    def choose(self, log_likelihoods: list[float], sample: Sample, renderer: Renderer):
        """The answer of likelihood mode: the most likely of `choices`, read as generation's would be."""
        texts = self.choices(sample, renderer) or []
        best = max(range(len(texts)), key=log_likelihoods.__getitem__)
        return self.parse(texts[best], sample, renderer)

    # ---- reading and scoring answers

    @abstractmethod
    def expected(self, sample: Sample, renderer: Renderer) -> Any:
        """What the sample expects, typed as `parse` reads an answer (a target, a label, a text)."""

    @abstractmethod
    def parse(self, text: str, sample: Sample, renderer: Renderer) -> Any:
        """A model's answer read as this task's answer; never raises: unreadable is a value."""

    @abstractmethod
    def score(self, answer: Any, sample: Sample, renderer: Renderer) -> Score:
        """One answer scored against what the sample expects."""

    @abstractmethod
    def aggregate(self, scores: list) -> Any:
        """The task's metrics of a list of scores."""

    # ---- rewards (train.stage: grpo): pure functions of an answer, like the scores they come from

    # the weights of the rewards used when the config's rl.rewards names none
    default_rewards: ClassVar[dict[str, float]] = {"score": 1.0}

    def rewards(self) -> dict[str, Callable[[Any, Sample, Renderer], float]]:
        """The task's rewards by name: each reads a parsed answer of one sample as a number."""
        return {"score": lambda answer, sample, renderer: self.score(answer, sample, renderer).value}

    # ---- people's view

    @abstractmethod
    def headline(self, result: ModelResult) -> str:
        """One line per model and mode, printed as evaluation goes."""

    @abstractmethod
    def report(self, results: list[ModelResult], samples: list[Sample], out: Path, settings: dict) -> Path:
        """Write the report's files into `out`; returns the path of its JSON."""


def pyplot():
    """matplotlib's pyplot drawing to files only (never a window), imported when a report draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
