"""A toy task, as docs/architecture.md shows one: "how many buttons are on this screen?", answered with a
whole number. One module; registering it is one line in pigg.tasks.TASKS ("count": "count_task:CountTask")."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from pigg.tasks.base import ModelResult, Task


@dataclass
class CountScore:
    source: str
    expected: int
    answered: int | None  # None: the answer holds no number

    @property
    def value(self) -> float:
        return float(self.answered == self.expected)

    def to_json(self) -> dict:
        return asdict(self)


class CountTask(Task):
    name = "count"
    unit = "screens"

    def expected(self, sample, renderer) -> int:
        return int(sample.answer())

    def parse(self, text, sample, renderer) -> int | None:
        number = re.search(r"-?\d+", text)
        return int(number.group()) if number else None

    def score(self, answer, sample, renderer) -> CountScore:
        return CountScore(sample.source, self.expected(sample, renderer), answer)

    def aggregate(self, scores: list[CountScore]) -> dict:
        answered = [s for s in scores if s.answered is not None]
        return {
            "samples": len(scores),
            "accuracy": sum(s.value for s in scores) / len(scores),
            "unparsed": len(scores) - len(answered),
            "mean_abs_error": (
                sum(abs(s.answered - s.expected) for s in answered) / len(answered) if answered else None
            ),
        }

    def headline(self, result: ModelResult) -> str:
        return f"{result.name}: {100 * result.metrics['accuracy']:.1f}% counted right"

    def report(self, results: list[ModelResult], samples, out: Path, settings: dict) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        for result in results:
            rows = "".join(json.dumps(s.to_json()) + "\n" for s in result.scores)
            (out / f"counts_{result.model}.jsonl").write_text(rows)
        path = out / "count.json"
        path.write_text(json.dumps({"settings": settings, "models": {r.name: r.metrics for r in results}}))
        return path
