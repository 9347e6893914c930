"""Classification results people read: a Markdown table per model side by side, and the confusion
matrices as one PNG (seed 004 drew base and tuned next to each other)."""

from __future__ import annotations

from pathlib import Path

from pigg.classification.metrics import UNPARSED, ClassificationScore


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
