"""`pigg data stats`: what a data set holds, as numbers and the plots seed 004 drew: the class
distribution (classification) or samples per user (grounding), and the length of every sample in tokens
as the trainer will see it (against data.max_length: what packing and truncation depend on)."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from pigg.data.sample import Sample


def _length_summary(lengths: list[int]) -> dict:
    ordered = sorted(lengths)
    return {
        "samples": len(ordered),
        "mean": round(statistics.fmean(ordered), 1),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max": ordered[-1],
        "min": ordered[0],
    }


def _groups(samples: list[Sample], classify: bool) -> Counter:
    if classify:
        return Counter(s.meta["label"] for s in samples)
    return Counter(f"user {s.user_id}" for s in samples)


def data_stats(
    splits: dict[str, tuple[list[Sample], list[int]]], out: Path, max_length: int, labels: list[str] | None
) -> Path:
    """Per split (name -> samples and their token lengths): counts per class or user and length summary;
    writes OUT/data_stats.json, classes.png (or users.png) and lengths.png; returns the JSON's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    classify = labels is not None
    report: dict = {"max_length": max_length, "splits": {}}
    for name, (samples, lengths) in splits.items():
        groups = _groups(samples, classify)
        order = labels if classify else sorted(groups, key=lambda g: int(g.split()[1]))
        report["splits"][name] = {
            "counts": {g: groups.get(g, 0) for g in order},
            "tokens": _length_summary(lengths),
        }

    kind = "classes" if classify else "users"
    figure, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(splits)
    for k, (name, split) in enumerate(report["splits"].items()):
        counts = split["counts"]
        xs = [i + k * width for i in range(len(counts))]
        bars = ax.bar(xs, list(counts.values()), width, label=f"{name} ({sum(counts.values())})")
        ax.bar_label(bars, fontsize=7)
        ax.set_xticks(
            [i + width * (len(splits) - 1) / 2 for i in range(len(counts))], list(counts), rotation=30
        )
    ax.set_ylabel("samples")
    ax.set_title("class distribution" if classify else "samples per user")
    ax.legend()
    figure.tight_layout()
    figure.savefig(out / f"{kind}.png", dpi=110)
    plt.close(figure)

    figure, ax = plt.subplots(figsize=(7, 4))
    for name, (_, lengths) in splits.items():
        ax.hist(lengths, bins=40, alpha=0.6, label=f"{name}: mean {statistics.fmean(lengths):.0f} tokens")
    ax.axvline(max_length, color="red", linestyle="--", label=f"data.max_length {max_length}")
    ax.set_xlabel("tokens per sample (prompt, answer and chat markup)")
    ax.set_ylabel("samples")
    ax.set_title("sample lengths")
    ax.legend()
    figure.tight_layout()
    figure.savefig(out / "lengths.png", dpi=110)
    plt.close(figure)

    path = out / "data_stats.json"
    path.write_text(json.dumps(report, indent=2))
    return path
