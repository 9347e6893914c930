"""Reading a click out of what a model answered, in the model's own coordinates.

Models wrap clicks in many forms; the ones seen in practice, tried in this order:
  click(x=512, y=300)  /  {"x": 512, "y": 300}     named coordinates
  {"point": [512, 300]}  /  {"point_2d": [...]}    a JSON object with a point (or a box: "bbox_2d")
  [x1, y1, x2, y2]  /  (x1, y1, x2, y2)           a box: its centre is the click
  (512, 300)  /  [512, 300]                       a bare point
with any text around them. The first match wins, so "(120, 40) then (200, 90)" reads as (120, 40).
An answer with none of these is a parse failure (None): the caller counts it as a miss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
