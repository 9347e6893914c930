"""Labels of a classification task as text, both ways: written as the answers seed 004 trains, and a model's
answer read back to one of the known labels, strictly: never a guess. Below the readers (tables read
labels) and the classification task alike.

Accepted: the JSON object seed 004 trains (`{"category": "World"}`, one key) or the bare label, compared
case-insensitively after trimming whitespace, quotes and a final period. Anything else ("World news",
"Sports or World", an unknown label, a JSON object with other keys) is a parse failure, counted as such:
an answer that merely mentions a label is not that label.
"""

from __future__ import annotations

import json

KEY = "category"


def _normal(text: str) -> str:
    return text.strip().strip("\"'").strip().rstrip(".").strip().casefold()


def parse_label(answer: str, labels: list[str], key: str = KEY) -> str | None:
    """The label `answer` names (spelled as in `labels`), or None when it names none unambiguously."""
    by_name = {_normal(label): label for label in labels}
    text = answer.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if not (isinstance(value, dict) and list(value) == [key] and isinstance(value[key], str)):
            return None
        text = value[key]
    return by_name.get(_normal(text))


def format_label(label: str, key: str = KEY) -> str:
    """The answer a model is trained to give for `label`, as seed 004 wrote it."""
    return json.dumps({key: label}, separators=(",", ":"))
