"""`pigg compare RUN...`: seed 002's report across runs, written from the runs' own logs.

Per run: final and smoothed train and eval loss, final step, training time, generalization gap (smoothed
eval minus smoothed train), the winner (lowest smoothed eval loss, or train loss when no run evaluated),
and loss curves as PNG, train and eval, one line per run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pigg.errors import ConfigError
from pigg.train.build import RUN_SUMMARY
from pigg.train.control import clock, latest_complete

# TensorBoard's default smoothing: what seed 002 read its "smoothed" columns from.
SMOOTHING = 0.6


def smoothed(values: list[float], weight: float = SMOOTHING) -> float | None:
    """The last point of TensorBoard's debiased exponential moving average."""
    if not values:
        return None
    average, correction = 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        correction = weight * correction + (1 - weight)
    return average / correction


@dataclass
class RunCurves:
    name: str
    folder: Path
    train: list[tuple[int, float]]
    eval: list[tuple[int, float]]
    steps: int
    seconds: float | None
    status: str
    trainable: int | None = None

    def final(self, which: str) -> float | None:
        points = getattr(self, which)
        return points[-1][1] if points else None

    def smooth(self, which: str) -> float | None:
        return smoothed([v for _, v in getattr(self, which)])

    @property
    def gap(self) -> float | None:
        e, t = self.smooth("eval"), self.smooth("train")
        return None if e is None or t is None else e - t


def read_run(folder: str | Path) -> RunCurves:
    """Curves from RUN/pigg_run.json, or, for a run still going or stopped, from its latest checkpoint's
    trainer_state.json."""
    folder = Path(folder)
    summary_path = folder / RUN_SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if "losses" in summary:
        train = [tuple(p) for p in summary["losses"]]
        evals = [tuple(p) for p in summary.get("eval_losses", [])]
        steps, seconds = summary["steps"], summary.get("train_seconds")
    else:
        checkpoint = latest_complete(folder)
        if checkpoint is None:
            raise ConfigError(f"{folder}: no {RUN_SUMMARY} with losses and no complete checkpoint to read")
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        history = state["log_history"]
        train = [(e["step"], e["loss"]) for e in history if "loss" in e]
        evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
        steps, seconds = state["global_step"], None
    name = summary.get("run") or folder.name
    return RunCurves(
        name,
        folder,
        train,
        evals,
        steps,
        seconds,
        summary.get("status", "unknown"),
        summary.get("trainable_params"),
    )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report_markdown(runs: list[RunCurves], png: str) -> str:
    use_eval = any(r.eval for r in runs)
    key = "eval" if use_eval else "train"
    ranked = sorted((r for r in runs if r.smooth(key) is not None), key=lambda r: r.smooth(key))
    lines = [
        "# Run comparison",
        "",
        f"Smoothed: TensorBoard's exponential moving average (weight {SMOOTHING}), last point. Gap: smoothed "
        "eval loss minus smoothed train loss.",
        "",
        "| run | eval loss (smoothed) | eval loss (final) | train loss (smoothed) | train loss (final) | "
        "final step | training time | gap | trainable params |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ranked + [r for r in runs if r not in ranked]:
        mark = " ✅" if ranked and r is ranked[0] else ""
        lines.append(
            f"| {r.name}{mark} | {_fmt(r.smooth('eval'))} | {_fmt(r.final('eval'))} | {_fmt(r.smooth('train'))} | "
            f"{_fmt(r.final('train'))} | {r.steps} | {clock(r.seconds) if r.seconds is not None else '-'} | "
            f"{_fmt(r.gap)} | {f'{r.trainable:,}' if r.trainable else '-'} |"
        )
    if ranked:
        best = ranked[0]
        lines += ["", f"**Winner**: `{best.name}`, lowest smoothed {key} loss ({best.smooth(key):.4f})"]
        others = [
            f"{100 * (r.smooth(key) - best.smooth(key)) / r.smooth(key):.1f}% better than `{r.name}`"
            for r in ranked[1:]
        ]
        if others:
            lines[-1] += ": " + ", ".join(others)
        lines[-1] += "."
    if not use_eval:
        lines += ["", "No run logged an eval loss (train.eval was off): ranked by train loss."]
    lines += ["", f"![loss curves]({png})", ""]
    return "\n".join(lines)


def plot_curves(runs: list[RunCurves], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train", "train loss")] + ([("eval", "eval loss")] if any(r.eval for r in runs) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (which, title) in zip(axes[0], panels, strict=True):
        for r in runs:
            points = getattr(r, which)
            if points:
                ax.plot(
                    [s for s, _ in points],
                    [v for _, v in points],
                    marker="." if which == "eval" else None,
                    label=r.name,
                )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_runs(folders: list[str | Path], out: str | Path) -> Path:
    """Write OUT/compare.md and OUT/loss_curves.png; returns the Markdown's path."""
    if len(folders) < 2:
        raise ConfigError("pigg compare needs at least two run folders")
    runs = [read_run(f) for f in folders]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, out / "loss_curves.png")
    path = out / "compare.md"
    path.write_text(report_markdown(runs, "loss_curves.png"))
    (out / "compare.json").write_text(
        json.dumps(
            [
                {
                    "run": r.name,
                    "folder": str(r.folder),
                    "status": r.status,
                    "eval_loss_smoothed": r.smooth("eval"),
                    "eval_loss_final": r.final("eval"),
                    "train_loss_smoothed": r.smooth("train"),
                    "train_loss_final": r.final("train"),
                    "final_step": r.steps,
                    "train_seconds": r.seconds,
                    "gap": r.gap,
                    "trainable_params": r.trainable,
                }
                for r in runs
            ],
            indent=2,
        )
    )
    return path
