"""Free-text answers (descriptions, VQA; seed 003): exact match and token F1 against the reference, and
seed 003's similarity score when evaluation embeds the texts (pigg.evaluation.similarity).

Seed 003 scores a generated answer by the cosine distance between the contextual embeddings of answer and
reference (0 is an identical answer; its base model scored 0.596, LoRA 0.037, full 0.031). Exact match and
token F1 are SQuAD's: lower case, punctuation and articles removed, whitespace collapsed; F1 over the bag
of tokens.

The report: freetext.json, freetext.md and answers_<model>.jsonl.
"""

from __future__ import annotations

import json
import re
import statistics
import string
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from pigg.data.render import Renderer
from pigg.data.sample import Sample
from pigg.tasks.base import ModelResult, Task

ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, wanted = normalise(prediction).split(), normalise(reference).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


@dataclass
class TextScore:
    source: str
    answer: str
    reference: str
    similarity: float | None  # cosine distance of the embeddings (0 = identical); set by evaluation
    exact_match: float
    token_f1: float

    @property
    def value(self) -> float:
        return self.token_f1

    def to_json(self) -> dict:
        return asdict(self)


class DescribeTask(Task):
    name = "describe"
    embeds = True  # evaluation adds the similarity of answer and reference embeddings
    max_new_tokens = 64  # descriptions run longer than clicks

    def expected(self, sample: Sample, renderer: Renderer) -> str:
        """The sample's last answer as training renders it (a target-derived answer in the family's form)."""
        last = [m for m in renderer.messages(sample) if m["role"] == "assistant"][-1]
        return "".join(i.get("text", "") for i in last["content"] if i["type"] == "text").strip()

    def parse(self, text: str, sample: Sample, renderer: Renderer) -> str:
        return text.strip()

    def score(self, answer: str, sample: Sample, renderer: Renderer) -> TextScore:
        reference = self.expected(sample, renderer)
        return TextScore(
            sample.source,
            answer,
            reference,
            None,
            exact_match(answer, reference),
            token_f1(answer, reference),
        )

    default_rewards = {"token_f1": 1.0}

    def rewards(self):
        return {
            "token_f1": lambda answer, sample, renderer: token_f1(answer, self.expected(sample, renderer)),
            "exact_match": lambda answer, sample, renderer: exact_match(
                answer, self.expected(sample, renderer)
            ),
            "format": lambda answer, sample, renderer: float(bool(answer)),
        }

    def aggregate(self, scores: list[TextScore]) -> dict:
        similarities = [s.similarity for s in scores if s.similarity is not None]
        return {
            "similarity": statistics.fmean(similarities) if similarities else None,
            "exact_match": statistics.fmean(s.exact_match for s in scores),
            "token_f1": statistics.fmean(s.token_f1 for s in scores),
            "samples": len(scores),
        }

    def headline(self, result: ModelResult) -> str:
        m = result.metrics
        return (
            f"{result.model}: similarity {m['similarity']:.4f} (0 = identical), exact match "
            f"{100 * m['exact_match']:.1f}%, token F1 {100 * m['token_f1']:.1f}%"
        )

    def report(self, results: list[ModelResult], samples: list[Sample], out: Path, settings: dict) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        models = {}
        for result in results:
            name = f"answers_{re.sub(r'[^A-Za-z0-9_.+-]+', '_', result.model)}.jsonl"
            rows = [
                {"source": s.source, "answer": s.answer, "reference": s.reference,
                 "similarity": round(s.similarity, 6), "exact_match": s.exact_match,
                 "token_f1": round(s.token_f1, 6)}
                for s in result.scores
            ]  # fmt: skip
            (out / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
            models[result.model] = {**result.metrics, "answers": name}
        embed_with = settings.get("embed_with", "self")
        path = out / "freetext.json"
        path.write_text(
            json.dumps({"metric": "similarity", "embed_with": embed_with, "models": models}, indent=2)
        )
        lines = [
            f"similarity: cosine distance of last-layer embeddings (0 = identical), embedded by {embed_with}",
            "",
            "| model | samples | similarity | exact match | token F1 |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, r in models.items():
            lines.append(
                f"| {label} | {r['samples']} | {r['similarity']:.4f} | {100 * r['exact_match']:.1f}% | "
                f"{100 * r['token_f1']:.1f}% |"
            )
        (out / "freetext.md").write_text("\n".join(lines) + "\n")
        return path
