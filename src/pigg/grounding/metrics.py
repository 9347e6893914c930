"""Click accuracy, ScreenSpot-style: a click is right when it falls inside the target element's box.

When a sample has no box, a click is right within `radius` of the target point, the radius being a
fraction of the screenshot's diagonal (so one number means the same on a phone and a 4K monitor).
An answer that cannot be read as a click is a miss, counted separately as a parse failure.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from pigg.data.sample import Target

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
