"""Evaluation results as files people read: JSON (machines), Markdown tables, and PNGs.

- eval.json: every model's overall / per-user / per-kind figures and the settings;
- predictions_<model>.jsonl: every answer with its score, parse failures included;
- eval.md: the same tables in Markdown;
- accuracy_per_user.png: one bar per model per user;
- clicks_<model>.png: screenshots with the target box and point (green) and the predicted point (red).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from pigg.data.sample import Sample, load_image  # noqa: E402
from pigg.grounding.evaluate import ModelEval  # noqa: E402


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)


def markdown_tables(results: list[ModelEval], summaries: list[dict]) -> str:
    lines = [
        "| model | samples | accuracy | parse failures | mean dist px | median dist px | median dist (diag) "
        "| eval loss | screens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result, s in zip(results, summaries, strict=True):
        o = s["overall"]
        lines.append(
            f"| {result.label} | {o['samples']} | {_pct(o['accuracy'])} | {o['parse_failures']} "
            f"| {_num(o['mean_distance_px'])} | {_num(o['median_distance_px'])} "
            f"| {_pct(o['median_distance_frac'])} | {_num(s['eval_loss'], 4)} | {_num(s['screens_per_second'])} |"
        )
    for section, title in (("per_user", "user"), ("per_kind", "kind")):
        keys = list(summaries[0][section])
        if len(keys) < 2 and section == "per_kind":
            continue
        lines += ["", f"| {title} | samples | " + " | ".join(r.label for r in results) + " |"]
        lines.append("|---|---|" + "---|" * len(results))
        for key in keys:
            accs = " | ".join(_pct(s[section][key]["accuracy"]) for s in summaries)
            lines.append(f"| {key} | {summaries[0][section][key]['samples']} | {accs} |")
    for name, values in summaries[0].get("per_category", {}).items():  # ScreenSpot's own breakdowns
        lines += ["", f"| {name} | samples | " + " | ".join(r.label for r in results) + " |"]
        lines.append("|---|---|" + "---|" * len(results))
        for value, first in values.items():
            accs = " | ".join(_pct(s["per_category"][name][value]["accuracy"]) for s in summaries)
            lines.append(f"| {value} | {first['samples']} | {accs} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_per_user(results: list[ModelEval], summaries: list[dict], path: Path) -> None:
    users = list(summaries[0]["per_user"])
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(users) * len(results) + 2), 4))
    for k, (result, s) in enumerate(zip(results, summaries, strict=True)):
        xs = [i + k * width for i in range(len(users))]
        ax.bar(xs, [100 * (s["per_user"][u]["accuracy"] or 0) for u in users], width, label=result.label)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(users))], users)
    ax.set_xlabel("user")
    ax.set_ylabel("click accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("Click accuracy per user")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_clicks(result: ModelEval, samples: list[Sample], path: Path, limit: int = 12) -> None:
    """A grid of screenshots: target box and point in green, the predicted point as a red cross."""
    shown = list(zip(samples, result.scores, strict=True))[:limit]
    cols = min(4, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (sample, score) in zip(axes.flat, shown, strict=False):
        ax.imshow(load_image(sample.image_refs()[-1], sample.base_dir))
        if score.box:
            x1, y1, x2, y2 = score.box
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", linewidth=2))
        if score.target:
            ax.plot(*score.target, "o", color="lime", markersize=6)
        if score.point:
            ax.plot(*score.point, "x", color="red", markersize=12, markeredgewidth=3)
        verdict = "hit" if score.hit else ("unparsed" if score.point is None else "miss")
        ax.set_title(
            f"{verdict}: {score.raw.strip()[:28]!r}", fontsize=8, color="green" if score.hit else "red"
        )
    fig.suptitle(f"{result.label}: target (green) vs predicted (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(results: list[ModelEval], samples: list[Sample], out: Path, settings: dict) -> Path:
    """Write every file of an evaluation into `out`; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = [r.summary() for r in results]
    for result in results:
        with (out / f"predictions_{safe_name(result.label)}.jsonl").open("w") as handle:
            for score in result.scores:
                handle.write(json.dumps(score.to_json()) + "\n")
        plot_clicks(result, samples, out / f"clicks_{safe_name(result.label)}.png")
    plot_accuracy_per_user(results, summaries, out / "accuracy_per_user.png")
    (out / "eval.md").write_text(markdown_tables(results, summaries))
    path = out / "eval.json"
    payload = {"settings": settings, "models": {r.label: s for r, s in zip(results, summaries, strict=True)}}
    path.write_text(json.dumps(payload, indent=2))
    return path
