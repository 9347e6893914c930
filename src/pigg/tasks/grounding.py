"""Click grounding: a click is right when it falls inside the target element's box (ScreenSpot's rule).

When a sample has no box, a click is right within `radius` of the target point, the radius being a
fraction of the screenshot's diagonal (so one number means the same on a phone and a 4K monitor).
An answer that cannot be read as a click is a miss, counted separately as a parse failure.

Models wrap clicks in many forms; the ones seen in practice, tried in this order:
  click(x=512, y=300)  /  {"x": 512, "y": 300}     named coordinates
  {"point": [512, 300]}  /  {"point_2d": [...]}    a JSON object with a point (or a box: "bbox_2d")
  [x1, y1, x2, y2]  /  (x1, y1, x2, y2)           a box: its centre is the click
  (512, 300)  /  [512, 300]                       a bare point
with any text around them. The first match wins, so "(120, 40) then (200, 90)" reads as (120, 40).
A point is read in the model family's coordinates and turned into screenshot pixels.

The report: eval.json (every model's overall / per-user / per-kind / per-category figures and the
settings), predictions_<model>.jsonl (every answer with its score, parse failures included), eval.md (the
same tables), accuracy_per_user.png, and clicks_<model>.png (screenshots with the target box and point in
green and the predicted point in red).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pigg.data.render import Renderer
from pigg.data.sample import Sample, Target, image_size, load_image
from pigg.models.coords import from_model
from pigg.tasks.base import ModelResult, Task, pyplot

_NUM = r"(-?\d+(?:\.\d+)?)"
_SEP = r"\s*,\s*"
_NAMED = re.compile(rf"""["']?x["']?\s*[:=]\s*{_NUM}\s*,\s*["']?y["']?\s*[:=]\s*{_NUM}""", re.IGNORECASE)
_BOX = re.compile(rf"[\[(]\s*{_NUM}{_SEP}{_NUM}{_SEP}{_NUM}{_SEP}{_NUM}\s*[\])]")
_POINT = re.compile(rf"[\[(]\s*{_NUM}{_SEP}{_NUM}\s*[\])]")


@dataclass(frozen=True)
class ParsedClick:
    point: tuple[float, float]  # in the model's coordinates
    form: str  # "named", "box" or "point": which form was read


def parse_click(answer: str) -> ParsedClick | None:
    """The click in `answer`, or None when it holds no point or box."""
    candidates = []
    for form, pattern in (("named", _NAMED), ("box", _BOX), ("point", _POINT)):
        match = pattern.search(answer)
        if match:
            candidates.append((match.start(), form, [float(v) for v in match.groups()]))
    if not candidates:
        return None
    # The earliest match in the text wins; at the same position a box beats the point it starts with.
    order = {"named": 0, "box": 1, "point": 2}
    _, form, values = min(candidates, key=lambda c: (c[0], order[c[1]]))
    if form == "box":
        x1, y1, x2, y2 = values
        return ParsedClick(((x1 + x2) / 2, (y1 + y2) / 2), form)
    return ParsedClick((values[0], values[1]), form)


DEFAULT_RADIUS = 0.05  # of the screenshot diagonal, when no box is known


@dataclass
class ClickScore:
    """One evaluated sample."""

    source: str
    user_id: int | None
    kind: str  # e.g. "habit" or "generic" for synthetic data; "all" when the data does not say
    raw: str
    point: tuple[float, float] | None  # predicted, in screenshot pixels; None: unparseable
    target: tuple[float, float] | None
    box: tuple[float, float, float, float] | None
    size: tuple[int, int]
    hit: bool
    distance_px: float | None  # to the target point (or the box centre)
    distance_frac: float | None  # the same as a fraction of the screenshot diagonal
    # a benchmark's own categories (ScreenSpot: ui_type, platform, application, group, source)
    categories: dict[str, str] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return float(self.hit)

    def to_json(self) -> dict:
        return asdict(self)


def inside(point: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    """Edges count as inside."""
    x, y = point
    x1, y1, x2, y2 = box
    return x1 <= x <= x2 and y1 <= y <= y2


def score_click(
    point: tuple[float, float] | None,
    target: Target,
    size: tuple[int, int],
    radius: float = DEFAULT_RADIUS,
) -> tuple[bool, float | None, float | None]:
    """(hit, distance in px, distance as a fraction of the diagonal) of one predicted point."""
    if target.point is not None:
        goal = target.point
    elif target.box is not None:
        goal = ((target.box[0] + target.box[2]) / 2, (target.box[1] + target.box[3]) / 2)
    else:
        raise ValueError("a target needs a point or a box")
    if point is None:
        return False, None, None
    diagonal = math.hypot(*size)
    distance = math.dist(point, goal)
    hit = inside(point, target.box) if target.box is not None else distance <= radius * diagonal
    return hit, distance, distance / diagonal


def gaussian_reward(
    point: tuple[float, float] | None, target: Target, size: tuple[int, int], radius: float = DEFAULT_RADIUS
) -> float:
    """A point reward in (0, 1] (GUI-G²'s Gaussian point reward): 1 at the target point (or the box centre),
    falling as a Gaussian whose spread is half the box's width and height, so at a box edge on an axis it
    is e^-0.5 ≈ 0.61 whatever the element's size; a target with no box spreads by `radius` of the
    screenshot's diagonal. An unreadable answer is 0."""
    if point is None:
        return 0.0
    if target.box is not None:
        x1, y1, x2, y2 = target.box
        goal = target.point or ((x1 + x2) / 2, (y1 + y2) / 2)
        sx, sy = (x2 - x1) / 2, (y2 - y1) / 2
    elif target.point is not None:
        goal = target.point
        sx = sy = radius * math.hypot(*size)
    else:
        raise ValueError("a target needs a point or a box")
    dx, dy = (point[0] - goal[0]) / sx, (point[1] - goal[1]) / sy
    return math.exp(-0.5 * (dx * dx + dy * dy))


def summarize(scores: list[ClickScore]) -> dict:
    """Accuracy, parse failures and distances of a group of scores."""
    n = len(scores)
    parsed = [s for s in scores if s.point is not None]
    distances = [s.distance_px for s in parsed]
    fractions = [s.distance_frac for s in parsed]
    return {
        "samples": n,
        "accuracy": sum(s.hit for s in scores) / n if n else None,
        "hits": sum(s.hit for s in scores),
        "parse_failures": n - len(parsed),
        "parse_failure_rate": (n - len(parsed)) / n if n else None,
        "mean_distance_px": statistics.fmean(distances) if distances else None,
        "median_distance_px": statistics.median(distances) if distances else None,
        "mean_distance_frac": statistics.fmean(fractions) if fractions else None,
        "median_distance_frac": statistics.median(fractions) if fractions else None,
    }


def breakdown(scores: list[ClickScore]) -> dict:
    """Overall, per user and per kind summaries, and per value of each benchmark category (as the
    ScreenSpot papers' tables break accuracy down: text vs icon, platform, application, group)."""
    users = sorted({s.user_id for s in scores}, key=lambda u: (u is None, u))
    kinds = sorted({s.kind for s in scores})
    out = {
        "overall": summarize(scores),
        "per_user": {str(u): summarize([s for s in scores if s.user_id == u]) for u in users},
        "per_kind": {k: summarize([s for s in scores if s.kind == k]) for k in kinds},
    }
    names = sorted({name for s in scores for name in s.categories})
    if names:
        out["per_category"] = {
            name: {
                value: summarize([s for s in scores if s.categories.get(name) == value])
                for value in sorted({s.categories[name] for s in scores if name in s.categories})
            }
            for name in names
        }
    return out


# ---------------------------------------------------------------- reading an answer as a click


@dataclass
class Click:
    """One answer read as a click: the raw text, and the point in screenshot pixels (None: unreadable)."""

    raw: str
    point: tuple[float, float] | None
    size: tuple[int, int]


def to_click(raw: str, size: tuple[int, int], renderer: Renderer) -> Click:
    """`raw` read as a click on a `size` screenshot, in its pixels (the family's coordinates undone)."""
    parsed = parse_click(raw)
    if parsed is None:
        return Click(raw, None, size)
    point = from_model(parsed.point, size, renderer.family, renderer.processor.image_processor)
    return Click(raw, point, size)


# ---------------------------------------------------------------- the task


class GroundingTask(Task):
    name = "grounding"
    unit = "screens"

    def expected(self, sample: Sample, renderer: Renderer) -> Target:
        if sample.target is None:
            raise ValueError(f"{sample.source}: no target (point or box) to score against")
        return sample.target

    def parse(self, text: str, sample: Sample, renderer: Renderer) -> Click:
        # clicks are read in the screenshot's own pixels: a cached image is already resized, so the size
        # comes from the file's header
        return to_click(text, image_size(sample.image_refs()[-1], sample.base_dir), renderer)

    def score(self, answer: Click, sample: Sample, renderer: Renderer) -> ClickScore:
        target = self.expected(sample, renderer)
        hit, distance, fraction = score_click(answer.point, target, answer.size, self.cfg.eval.radius)
        return ClickScore(
            source=sample.source,
            user_id=sample.user_id,
            kind=str(sample.meta.get("kind", "all")),
            raw=answer.raw,
            point=answer.point,
            target=target.point,
            box=target.box,
            size=answer.size,
            hit=hit,
            distance_px=distance,
            distance_frac=fraction,
            categories=dict(sample.meta.get("categories") or {}),
        )

    def aggregate(self, scores: list[ClickScore]) -> dict:
        return breakdown(scores)

    # inside: the score itself (any click in the box is right, as SFT cannot say); gaussian: a dense signal
    # that still rewards a near miss; format: the answer reads as a click
    default_rewards = {"inside": 1.0, "gaussian": 0.5, "format": 0.1}

    def rewards(self):
        radius = self.cfg.eval.radius
        return {
            "inside": lambda click, sample, renderer: self.score(click, sample, renderer).value,
            "gaussian": lambda click, sample, renderer: gaussian_reward(
                click.point, sample.target, click.size, radius
            ),
            "format": lambda click, sample, renderer: float(click.point is not None),
        }

    def headline(self, result: ModelResult) -> str:
        o = result.metrics["overall"]
        return (
            f"{result.model}: accuracy {100 * o['accuracy']:.1f}% ({o['hits']}/{o['samples']}), "
            f"parse failures {o['parse_failures']}"
            + (f", eval loss {result.loss:.4f}" if result.loss else "")
        )

    def report(self, results: list[ModelResult], samples: list[Sample], out: Path, settings: dict) -> Path:
        return write_report(results, samples, out, settings)


def summary(result: ModelResult) -> dict:
    """A model's figures as eval.json holds them: the breakdown, the evaluation loss and the speed."""
    return {
        **result.metrics,
        "eval_loss": result.loss,
        "screens_per_second": len(result.scores) / result.seconds if result.seconds else None,
    }


# ---------------------------------------------------------------- the report


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)


def markdown_tables(results: list[ModelResult], summaries: list[dict]) -> str:
    lines = [
        "| model | samples | accuracy | parse failures | mean dist px | median dist px | median dist (diag) "
        "| eval loss | screens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result, s in zip(results, summaries, strict=True):
        o = s["overall"]
        lines.append(
            f"| {result.model} | {o['samples']} | {_pct(o['accuracy'])} | {o['parse_failures']} "
            f"| {_num(o['mean_distance_px'])} | {_num(o['median_distance_px'])} "
            f"| {_pct(o['median_distance_frac'])} | {_num(s['eval_loss'], 4)} | {_num(s['screens_per_second'])} |"
        )
    for section, title in (("per_user", "user"), ("per_kind", "kind")):
        keys = list(summaries[0][section])
        if len(keys) < 2 and section == "per_kind":
            continue
        lines += ["", f"| {title} | samples | " + " | ".join(r.model for r in results) + " |"]
        lines.append("|---|---|" + "---|" * len(results))
        for key in keys:
            accs = " | ".join(_pct(s[section][key]["accuracy"]) for s in summaries)
            lines.append(f"| {key} | {summaries[0][section][key]['samples']} | {accs} |")
    for name, values in summaries[0].get("per_category", {}).items():  # ScreenSpot's own breakdowns
        lines += ["", f"| {name} | samples | " + " | ".join(r.model for r in results) + " |"]
        lines.append("|---|---|" + "---|" * len(results))
        for value, first in values.items():
            accs = " | ".join(_pct(s["per_category"][name][value]["accuracy"]) for s in summaries)
            lines.append(f"| {value} | {first['samples']} | {accs} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_per_user(results: list[ModelResult], summaries: list[dict], path: Path) -> None:
    plt = pyplot()
    users = list(summaries[0]["per_user"])
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(users) * len(results) + 2), 4))
    for k, (result, s) in enumerate(zip(results, summaries, strict=True)):
        xs = [i + k * width for i in range(len(users))]
        ax.bar(xs, [100 * (s["per_user"][u]["accuracy"] or 0) for u in users], width, label=result.model)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(users))], users)
    ax.set_xlabel("user")
    ax.set_ylabel("click accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("Click accuracy per user")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_clicks(result: ModelResult, samples: list[Sample], path: Path, limit: int = 12) -> None:
    """A grid of screenshots: target box and point in green, the predicted point as a red cross."""
    plt = pyplot()
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
    fig.suptitle(f"{result.model}: target (green) vs predicted (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_report(results: list[ModelResult], samples: list[Sample], out: Path, settings: dict) -> Path:
    """Write every file of an evaluation into `out`; returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summary(r) for r in results]
    for result in results:
        with (out / f"predictions_{safe_name(result.model)}.jsonl").open("w") as handle:
            for score in result.scores:
                handle.write(json.dumps(score.to_json()) + "\n")
        plot_clicks(result, samples, out / f"clicks_{safe_name(result.model)}.png")
    plot_accuracy_per_user(results, summaries, out / "accuracy_per_user.png")
    (out / "eval.md").write_text(markdown_tables(results, summaries))
    path = out / "eval.json"
    payload = {"settings": settings, "models": {r.model: s for r, s in zip(results, summaries, strict=True)}}
    path.write_text(json.dumps(payload, indent=2))
    return path
