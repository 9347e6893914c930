"""Text classification (seed 004): labels read strictly from answers, and accuracy, macro-F1, per-class
precision / recall / F1 / support and the confusion matrix.

An answer is read strictly (pigg.data.labels): anything that is not `{"category": ...}` or a bare label is
a counted parse failure, never a guess. The labels are a task's fixed choices, so evaluation can also
pick the most likely label's answer (likelihood mode: no generation, no parse failure).

Metric conventions (those of scikit-learn's `classification_report` with `zero_division=0`, which seed 004
used):
- a parse failure is a wrong answer: it lowers accuracy and the recall of its gold class, and it has a
  column of its own in the confusion matrix;
- a class never predicted has precision 0 (not undefined), and so F1 0;
- macro-F1 is the unweighted mean over every configured label, including one with no gold sample.

The report: classification.json (metrics, throughput, settings), classification.md, confusion.png (every
model and mode side by side, as seed 004 drew base and tuned) and one predictions JSONL per model and mode.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pigg.data.labels import parse_label
from pigg.data.readers.rows import ReadResult
from pigg.data.readers.tables import answer_text, read_classification
from pigg.data.render import Renderer
from pigg.data.sample import Sample
from pigg.tasks.base import ModelResult, Task, pyplot

UNPARSED = "(unparsed)"


@dataclass
class ClassScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # gold samples of this class


@dataclass
class ClassificationScore:
    labels: list[str]
    total: int
    accuracy: float
    macro_f1: float
    parse_failures: int
    per_class: list[ClassScore]
    # rows: gold label (in `labels` order); columns: predicted label, then UNPARSED
    confusion: list[list[int]]

    def to_dict(self) -> dict:
        return asdict(self)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def score_labels(gold: list[str], predicted: list[str | None], labels: list[str]) -> ClassificationScore:
    """Score predicted labels (None: a parse failure) against gold labels, all among `labels`."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    unknown = sorted(
        {g for g in gold if g not in labels} | {p for p in predicted if p not in (*labels, None)}
    )
    if unknown:
        raise ValueError(f"labels {unknown} are not among the configured labels {labels}")
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * (len(labels) + 1) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        confusion[index[g]][len(labels) if p is None else index[p]] += 1
    per_class = []
    for i, label in enumerate(labels):
        hits = confusion[i][i]
        predicted_as = sum(row[i] for row in confusion)
        support = sum(confusion[i])
        precision, recall = _ratio(hits, predicted_as), _ratio(hits, support)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(ClassScore(label, precision, recall, f1, support))
    correct = sum(confusion[i][i] for i in range(len(labels)))
    return ClassificationScore(
        labels=list(labels),
        total=len(gold),
        accuracy=_ratio(correct, len(gold)),
        macro_f1=sum(c.f1 for c in per_class) / len(per_class) if per_class else 0.0,
        parse_failures=sum(p is None for p in predicted),
        per_class=per_class,
        confusion=confusion,
    )


# ---------------------------------------------------------------- the task


@dataclass
class Label:
    """An answer read as a label (None: it names none), with each label's log-likelihood in likelihood mode."""

    raw: str
    label: str | None
    log_likelihoods: dict[str, float] | None = None


@dataclass
class Prediction:
    source: str
    gold: str
    predicted: str | None  # None: the answer names no label (generation only)
    raw: str  # the generated text, or the label's answer text in likelihood mode
    log_likelihoods: dict[str, float] | None = None

    @property
    def value(self) -> float:
        return float(self.predicted == self.gold)

    def to_json(self) -> dict:
        return asdict(self)


class ClassifyTask(Task):
    name = "classify"
    unit = "items"
    by_users = False  # evaluated on a file: data.eval_path or --data

    @property
    def labels(self) -> list[str]:
        return self.cfg.classify.labels

    def read(self, path: str, users: str | None) -> ReadResult:
        return read_classification(path, self.cfg.classify)

    def choices(self, sample: Sample, renderer: Renderer) -> list[str]:
        return [answer_text(label, self.cfg.classify) for label in self.labels]

    def choose(self, log_likelihoods: list[float], sample: Sample, renderer: Renderer) -> Label:
        best = max(range(len(self.labels)), key=log_likelihoods.__getitem__)
        scored = {label: round(v, 4) for label, v in zip(self.labels, log_likelihoods, strict=True)}
        return Label(answer_text(self.labels[best], self.cfg.classify), self.labels[best], scored)

    def expected(self, sample: Sample, renderer: Renderer) -> str:
        if "label" not in sample.meta:
            raise ValueError(f"{sample.source}: no gold label")
        return sample.meta["label"]

    def parse(self, text: str, sample: Sample, renderer: Renderer) -> Label:
        return Label(text, parse_label(text, self.labels, self.cfg.classify.key))

    def score(self, answer: Label, sample: Sample, renderer: Renderer) -> Prediction:
        gold = self.expected(sample, renderer)
        return Prediction(sample.source, gold, answer.label, answer.raw, answer.log_likelihoods)

    default_rewards = {"label": 1.0, "format": 0.1}

    def rewards(self):
        return {
            "label": lambda answer, sample, renderer: float(answer.label == self.expected(sample, renderer)),
            "format": lambda answer, sample, renderer: float(answer.label is not None),
        }

    def aggregate(self, scores: list[Prediction]) -> ClassificationScore:
        return score_labels([p.gold for p in scores], [p.predicted for p in scores], self.labels)

    def headline(self, result: ModelResult) -> str:
        t, m = result.throughput, result.metrics
        return (
            f"{result.name}: accuracy {100 * m.accuracy:.2f}%, macro-F1 {100 * m.macro_f1:.2f}%, parse failures "
            f"{m.parse_failures}; {t.items_per_second:.1f} items/s, latency p50 {t.latency_ms_p50:.0f} ms "
            f"(batch {t.batch_size})"
        )

    def report(self, results: list[ModelResult], samples: list[Sample], out: Path, settings: dict) -> Path:
        return write_report(results, out, {**settings, "labels": self.labels})


# ---------------------------------------------------------------- the report


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def markdown(scores: dict[str, ClassificationScore]) -> str:
    """Accuracy, macro-F1, parse failures and per-class F1, one column per model."""
    names = list(scores)
    first = scores[names[0]]
    lines = [
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| accuracy | " + " | ".join(_pct(scores[n].accuracy) for n in names) + " |",
        "| F1 (macro) | " + " | ".join(_pct(scores[n].macro_f1) for n in names) + " |",
        "| parse failures | " + " | ".join(str(scores[n].parse_failures) for n in names) + " |",
    ]
    for i, label in enumerate(first.labels):
        lines.append(f"| {label} F1 | " + " | ".join(_pct(scores[n].per_class[i].f1) for n in names) + " |")
    lines += ["", "| model | class | precision | recall | F1 | support |", "|---|---|---:|---:|---:|---:|"]
    for name in names:
        for c in scores[name].per_class:
            lines.append(
                f"| {name} | {c.label} | {_pct(c.precision)} | {_pct(c.recall)} | {_pct(c.f1)} | {c.support} |"
            )
    return "\n".join(lines)


def confusion_png(scores: dict[str, ClassificationScore], path: Path) -> Path:
    """One heat map per model, side by side: gold rows, predicted columns plus the unparsed answers."""
    plt = pyplot()
    names = list(scores)
    figure, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        score = scores[name]
        ax.imshow(score.confusion, cmap="Blues")
        columns = [*score.labels, UNPARSED]
        ax.set_xticks(range(len(columns)), columns, rotation=35, ha="right")
        ax.set_yticks(range(len(score.labels)), score.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{name}: accuracy {_pct(score.accuracy)}, macro-F1 {_pct(score.macro_f1)}")
        top = max(max(row) for row in score.confusion) or 1
        for r, row in enumerate(score.confusion):
            for c, count in enumerate(row):
                ax.text(
                    c, r, str(count), ha="center", va="center", color="white" if count > top / 2 else "black"
                )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(results: list[ModelResult], out: Path, described: dict) -> Path:
    """OUT/classification.json (metrics, throughput, settings), .md, confusion.png (every model and mode
    side by side) and one predictions JSONL per model and mode; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    scores = {r.name: r.metrics for r in results}
    png = confusion_png(scores, out / "confusion.png")
    files = {}
    for r in results:
        name = f"predictions_{_slug(r.model)}_{r.mode}.jsonl"
        with (out / name).open("w") as handle:
            for p in r.scores:
                handle.write(json.dumps(asdict(p)) + "\n")
        files[r.name] = name
    report = {
        **described,
        "results": {
            r.name: {
                "model": r.model,
                "mode": r.mode,
                "accuracy": r.metrics.accuracy,
                "macro_f1": r.metrics.macro_f1,
                "parse_failures": r.metrics.parse_failures,
                "score": r.metrics.to_dict(),
                "throughput": asdict(r.throughput),
                "predictions": files[r.name],
            }
            for r in results
        },
        "confusion_png": str(png),
    }
    path = out / "classification.json"
    path.write_text(json.dumps(report, indent=2))
    (out / "classification.md").write_text(markdown(scores) + "\n\n" + throughput_table(results) + "\n")
    return path


def throughput_table(results: list[ModelResult]) -> str:
    lines = [
        "| model | items/s | batch | latency mean | p50 | p95 | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t = r.throughput
        lines.append(
            f"| {r.name} | {t.items_per_second:.1f} | {t.batch_size} | {t.latency_ms_mean:.0f} ms | "
            f"{t.latency_ms_p50:.0f} ms | {t.latency_ms_p95:.0f} ms | {t.tokens_per_second:.0f} |"
        )
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
