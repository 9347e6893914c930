"""Accuracy, macro-F1, per-class precision / recall / F1 / support and the confusion matrix.

Conventions (those of scikit-learn's `classification_report` with `zero_division=0`, which seed 004 used):
- a parse failure is a wrong answer: it lowers accuracy and the recall of its gold class, and it has a
  column of its own in the confusion matrix;
- a class never predicted has precision 0 (not undefined), and so F1 0;
- macro-F1 is the unweighted mean over every configured label, including one with no gold sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
