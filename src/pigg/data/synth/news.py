"""A synthetic 4-class news set in seed 004's chat layout, for tests and the text demo (no hub here).

Each article mixes words of its class with words every class uses; Business and Sci/Tech share some
words (companies, markets of technology), so the task is not a lookup. Lengths follow seed 004's spread
(AG News: ~120 tokens on average, a long tail to 512): a log-normal number of words per article, each
class with its own median, clipped to 15-380 words.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from pigg.data.labels import format_label

LABELS = ("World", "Sports", "Business", "Sci/Tech")
SYSTEM = (
    "You are a news article classifier. Answer with the article's category as JSON, "
    'for example {"category":"World"}. Categories: World, Sports, Business, Sci/Tech.'
)
PROMPT = "Classify the following news article:\n\n"

_CLASS_WORDS = {
    "World": "government minister election parliament border treaty embassy president rebels ceasefire "
    "refugees summit diplomats sanctions capital protest coalition war peace united nations",
    "Sports": "match season coach striker goal championship league tournament players victory defeat "
    "olympic medal stadium injury transfer score final cup team",
    "Business": "shares profit quarterly revenue investors bank merger stock market earnings oil prices "
    "economy inflation company deal billion retail growth",
    "Sci/Tech": "software researchers computer internet space nasa chip scientists study network "
    "security startup launch data mobile genome climate telescope",
}
# words both Business and Sci/Tech articles use: deciding between them takes the other words
_SHARED_PAIR = ["company", "market", "billion", "startup", "deal", "chip", "technology"]
_FILLER = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "on",
    "for",
    "with",
    "as",
    "at",
    "by",
    "from",
    "said",
    "on",
    "tuesday",
    "monday",
    "week",
    "year",
    "new",
    "after",
    "officials",
    "report",
    "people",
    "according",
    "more",
    "than",
    "about",
    "this",
    "that",
    "its",
    "their",
    "was",
    "were",
    "has",
    "have",
    "will",
]
_MEDIAN_WORDS = {"World": 95, "Sports": 80, "Business": 100, "Sci/Tech": 110}


def vocabulary() -> list[str]:
    """Every word the articles, prompts and answers use (the tiny text tokenizer learns merges for them)."""
    words = {w for text in _CLASS_WORDS.values() for w in text.split()} | set(_FILLER) | set(_SHARED_PAIR)
    prose = f"{SYSTEM} {PROMPT}".replace(",", " ").replace(".", " ").replace(":", " ").split()
    return sorted(words | set(prose)) + [format_label(label) for label in LABELS]


# The share of an article's words that are its class's own: low enough that a short article can carry
# only one or two of them (and Business / Sci/Tech ones may be shared), so a model is not always right.
OWN_WORDS = 0.08


def article(label: str, rng: random.Random) -> str:
    """One article of class `label`: about OWN_WORDS of its words are the class's own."""
    words = round(min(380, max(15, rng.lognormvariate(math.log(_MEDIAN_WORDS[label]), 0.45))))
    own = _CLASS_WORDS[label].split()
    if label in ("Business", "Sci/Tech"):
        own = own + _SHARED_PAIR
    return " ".join(
        rng.choice(own) if rng.random() < OWN_WORDS else rng.choice(_FILLER) for _ in range(words)
    )


def synthesize_news(out: str | Path, count: int, seed: int = 0) -> Path:
    """Write `count` chat rows (system, user article, assistant `{"category": ...}`) to a JSONL file,
    classes in equal shares and shuffled; return the path."""
    rng = random.Random(seed)
    labels = [LABELS[i % len(LABELS)] for i in range(count)]
    rng.shuffle(labels)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for label in labels:
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": PROMPT + article(label, rng)},
                {"role": "assistant", "content": format_label(label)},
            ]
            handle.write(json.dumps({"messages": messages, "label": label}) + "\n")
    return out
