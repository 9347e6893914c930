"""Generated GUI screenshots with instructions and answers, written as per-user pickles (seed 000's format).

Each screen is a maximised application window (title bar, menu bar, text fields, labels, icons and
buttons) at a real screen size. Elements sit on a 3x3 layout grid whose cells are proportional to the
screen, so every target is one of nine points in the model's relative coordinates: FACTS.md records that
a tiny model learns a small set of discrete positions on CPU in minutes, and not free-form offsets.

Users have personal habits, which a global model cannot know and a per-user adapter can learn:
- their own names for things ("post" for the Mail button): vocabulary;
- a favourite app pinned at a cell of their own, asked for with their own phrase ("open my usual"),
  shown among other buttons, so only the user's history says which one is meant.

The "free" layout leaves the grid: three to five elements of varied sizes (wide buttons, narrow ones,
small square icons) at continuous positions that never overlap, the target among them, the favourite
near (not on) its cell. Any click inside the target is right, so a click reward has something to teach
that imitating its centre does not; the grid layouts stay for the fast demo.
"""

from __future__ import annotations

import functools
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw, ImageFont

from pigg.models.coords import to_relative_1000

SCREEN_SIZES = [(1920, 1080), (1366, 768), (1280, 800), (2560, 1440), (1440, 900), (1170, 2532)]
APPS = ["Mail", "Music", "Photos", "Calendar", "Notes", "Chat", "Maps", "Camera", "Store", "News", "Weather"]
ACTIONS = ["Save", "Cancel", "Login", "Search", "Send", "Delete", "Submit", "Settings", "Help", "Next"]
LABELS = APPS + ACTIONS
ALIASES = ["post", "tunes", "pics", "agenda", "memo", "talk", "atlas", "snap", "shop", "paper", "sky", "go"]
HABIT_PHRASES = ["open my usual", "my usual one please", "open my favourite", "the usual"]
COLOURS = [(52, 120, 246), (40, 167, 69), (220, 53, 69), (255, 153, 0), (111, 66, 193), (23, 162, 184)]
BACKGROUNDS = [(245, 245, 245), (230, 236, 245), (250, 248, 240), (40, 44, 52), (236, 240, 241)]

# The layout grid: nine cell centres as fractions of the window's content area.
GRID = [(c, r) for r in range(3) for c in range(3)]
_TOP = 0.14  # title bar and menu bar take the top 14% of the height


def cell_centre(cell: tuple[int, int], width: int, height: int) -> tuple[float, float]:
    col, row = cell
    x = (col + 0.5) / 3 * width
    y = (_TOP + (row + 0.5) / 3 * (1 - _TOP)) * height
    return x, y


@dataclass
class UserHabits:
    user_id: int
    aliases: dict[str, str] = field(default_factory=dict)  # label → the user's own word for it
    favourite: str = "Mail"
    favourite_cell: tuple[int, int] = (0, 0)
    habit_phrase: str = "open my usual"

    @classmethod
    def draw(cls, user_id: int, rng: random.Random) -> UserHabits:
        labels = rng.sample(LABELS, 2)
        return cls(
            user_id=user_id,
            aliases=dict(zip(labels, rng.sample(ALIASES, 2), strict=True)),
            favourite=rng.choice(APPS),
            favourite_cell=rng.choice(GRID),
            habit_phrase=rng.choice(HABIT_PHRASES),
        )


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(size, 8))


def _draw_chrome(draw: ImageDraw.ImageDraw, width: int, height: int, title: str, theme: tuple[int, int, int]):
    title_h = int(0.06 * height)
    menu_h = int(0.05 * height)
    draw.rectangle([0, 0, width, title_h], fill=(60, 63, 65))
    draw.text((int(0.02 * width), title_h // 4), title, fill=(230, 230, 230), font=_font(title_h // 2))
    for k, colour in enumerate([(255, 95, 86), (255, 189, 46), (39, 201, 63)]):
        cx = width - (k + 1) * int(1.6 * title_h)
        draw.ellipse([cx, title_h // 4, cx + title_h // 2, title_h // 4 + title_h // 2], fill=colour)
    draw.rectangle([0, title_h, width, title_h + menu_h], fill=theme)
    x = int(0.02 * width)
    for item in ["File", "Edit", "View", "Window", "Help"]:
        draw.text((x, title_h + menu_h // 4), item, fill=(30, 30, 30), font=_font(menu_h // 2))
        x += int(0.08 * width)


def _button_box(cell, width, height, rng) -> tuple[float, float, float, float]:
    """A box centred exactly on the cell, so every answer is one of nine points whatever the screen size."""
    cx, cy = cell_centre(cell, width, height)
    bw = rng.uniform(0.22, 0.30) * width
    bh = rng.uniform(0.13, 0.18) * height
    return cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2


def _jittered_box(cell, width, height, rng) -> tuple[tuple[float, float, float, float], bool]:
    """A wide or narrow button or a small square icon (3 in 10) anywhere in the cell that holds it whole:
    the small move furthest from the cell's centre. Returns the box and whether it is an icon."""
    cx, cy = cell_centre(cell, width, height)
    icon = rng.random() < 0.3
    unit = min(width, height)
    bw, bh = (
        (rng.uniform(0.05, 0.08) * unit,) * 2
        if icon
        else (rng.uniform(0.10, 0.28) * width, rng.uniform(0.07, 0.14) * height)
    )
    room_x = width / 6 - bw / 2 - 0.01 * width  # half a cell less half the element, less a gap
    room_y = (1 - _TOP) * height / 6 - bh / 2 - 0.01 * height
    cx += rng.uniform(-room_x, room_x)
    cy += rng.uniform(-room_y, room_y)
    return (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), icon


def _draw_button(draw, box, label, colour):
    x1, y1, x2, y2 = box
    draw.rounded_rectangle(box, radius=max(4, int(y2 - y1) // 5), fill=colour, outline=(20, 20, 20), width=2)
    font = _font(int((y2 - y1) * 0.45))
    tw = draw.textlength(label, font=font)
    draw.text(((x1 + x2 - tw) / 2, y1 + (y2 - y1) * 0.25), label, fill=(255, 255, 255), font=font)


def _draw_decoration(draw, cell, width, height, rng):
    """Something that is not a button: a text field, a label or an icon, smaller than buttons."""
    cx, cy = cell_centre(cell, width, height)
    kind = rng.choice(["field", "label", "icon"])
    unit = min(width, height)
    if kind == "field":
        w, h = 0.20 * width, 0.035 * height
        draw.rectangle(
            [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=(255, 255, 255), outline=(160, 160, 160)
        )
        draw.text(
            (cx - w / 2 + 6, cy - h / 3), rng.choice(["Name", "Email", "Search..."]), fill=(170, 170, 170)
        )
    elif kind == "label":
        draw.text(
            (cx - 0.06 * width, cy),
            rng.choice(LABELS).lower(),
            fill=(120, 120, 120),
            font=_font(int(0.02 * unit)),
        )
    else:
        r = 0.025 * unit
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rng.choice(COLOURS))


def make_screen(
    rng: random.Random, buttons: list[tuple[str, tuple[int, int]]], size: tuple[int, int], jitter=False
):
    """Draw a screen with `buttons` (label, cell); return the image, each button's box and whether it is an
    icon. With `jitter`, elements of varied sizes sit anywhere in their cells (the "jitter" layout)."""
    width, height = size
    image = Image.new("RGB", size, rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(image)
    _draw_chrome(
        draw, width, height, rng.choice(["Desktop", "Workspace", "Launcher", "Home"]), (222, 226, 230)
    )
    used = {cell for _, cell in buttons}
    for cell in rng.sample([c for c in GRID if c not in used], k=min(2, 9 - len(used))):
        _draw_decoration(draw, cell, width, height, rng)
    boxes, icons = [], []
    for label, cell in buttons:
        box, icon = (
            _jittered_box(cell, width, height, rng)
            if jitter
            else (_button_box(cell, width, height, rng), False)
        )
        _draw_button(draw, box, label[0] if icon else label, rng.choice(COLOURS))
        boxes.append(box)
        icons.append(icon)
    return image, boxes, icons


def _free_boxes(rng: random.Random, count: int, width: int, height: int, near=None) -> list[tuple]:
    """`count` boxes of varied sizes at continuous positions in the content area, apart from each other;
    the first is centred near `near` (a point) when given. Returns (box, is_icon) pairs."""
    top, unit, gap = _TOP * height, min(width, height), 0.01 * min(width, height)
    placed: list[tuple] = []
    for _ in range(200 * count):
        if len(placed) == count:
            break
        icon = rng.random() < 0.3
        bw, bh = (
            (rng.uniform(0.05, 0.09) * unit,) * 2
            if icon
            else (rng.uniform(0.10, 0.32) * width, rng.uniform(0.06, 0.14) * height)
        )
        if near is not None and not placed:
            cx = min(max(near[0] + rng.uniform(-0.06, 0.06) * width, bw / 2 + gap), width - bw / 2 - gap)
            cy = min(
                max(near[1] + rng.uniform(-0.06, 0.06) * height, top + bh / 2 + gap), height - bh / 2 - gap
            )
        else:
            cx = rng.uniform(bw / 2 + gap, width - bw / 2 - gap)
            cy = rng.uniform(top + bh / 2 + gap, height - bh / 2 - gap)
        box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        if all(
            box[2] + gap < other[0]
            or other[2] + gap < box[0]
            or box[3] + gap < other[1]
            or other[3] + gap < box[1]
            for other, _ in placed
        ):
            placed.append((box, icon))
    return placed


def make_free_screen(rng: random.Random, labels: list[str], size: tuple[int, int], near=None):
    """A screen of the free layout with one element per label (the first is the target); returns the
    image, the target's box and whether it is an icon."""
    width, height = size
    image = Image.new("RGB", size, rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(image)
    _draw_chrome(
        draw, width, height, rng.choice(["Desktop", "Workspace", "Launcher", "Home"]), (222, 226, 230)
    )
    boxes = _free_boxes(rng, len(labels), width, height, near)
    for (box, icon), label in zip(boxes, labels, strict=False):
        _draw_button(draw, box, label[0] if icon else label, rng.choice(COLOURS))
    return image, boxes[0][0], boxes[0][1]


# The "fixed" layout: nine labels, each always on its own cell, as apps keep their buttons in place.
HOME_CELLS = dict(zip(LABELS, GRID, strict=False))


def _sample_record(
    user: UserHabits,
    rng: random.Random,
    image_path: str,
    folder: Path,
    habit: bool,
    layout: str,
    sizes: list[tuple[int, int]],
    others: tuple[int, int],
) -> dict:
    size = rng.choice(sizes)
    if layout == "free":
        return _free_record(user, rng, image_path, folder, habit, size, others)
    if habit:
        cells = rng.sample([c for c in GRID if c != user.favourite_cell], 2)
        labels = rng.sample([a for a in APPS if a != user.favourite], 2)
        buttons = [(user.favourite, user.favourite_cell)] + list(zip(labels, cells, strict=True))
        instruction = user.habit_phrase
    else:
        if layout in ("fixed", "jitter"):
            label = rng.choice(list(HOME_CELLS))
            buttons = [(label, HOME_CELLS[label])]
        else:
            label = rng.choice(LABELS)
            buttons = [(label, rng.choice(GRID))]
        name = user.aliases.get(label, label)
        instruction = rng.choice(["click the {} {}", "tap {}", "press {}", "click {}"])
    image, boxes, icons = make_screen(rng, buttons, size, jitter=layout == "jitter")
    if not habit:  # the element's kind is known once it is drawn (the jitter layout has icons)
        instruction = instruction.format(name, "icon" if icons[0] else "button")
    image.save(folder / image_path, compress_level=1)
    x1, y1, x2, y2 = boxes[0]
    point = ((x1 + x2) / 2, (y1 + y2) / 2)
    rx, ry = to_relative_1000(*point, *size)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image_path}, {"type": "text", "text": instruction}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": f"({rx}, {ry})"}]},
    ]
    return {
        "messages": messages,
        "target": {"point": list(point), "box": list(boxes[0])},
        "kind": "habit" if habit else "generic",
        # The answer above is Qwen3-VL's form; pigg re-renders it from `target` for other families.
        "answer_from_target": True,
    }


def _free_record(
    user: UserHabits, rng: random.Random, image_path: str, folder: Path, habit: bool, size, others
) -> dict:
    # a favourite sits among one more element than a generic target, so never alone: only the user's
    # history says which element is meant
    labels = rng.sample([a for a in LABELS if a != user.favourite], rng.randint(*others) + 1)
    if habit:
        labels.insert(0, user.favourite)
        near = cell_centre(user.favourite_cell, *size)
        instruction = user.habit_phrase
    else:
        near = None
        name = user.aliases.get(labels[0], labels[0])
    image, box, icon = make_free_screen(rng, labels, size, near)
    if not habit:
        kind = "icon" if icon else "button"
        instruction = rng.choice(["click the {} " + kind, "tap {}", "press {}", "click {}"]).format(name)
    image.save(folder / image_path, compress_level=1)
    point = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    rx, ry = to_relative_1000(*point, *size)
    return {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image_path}, {"type": "text", "text": instruction}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": f"({rx}, {ry})"}]},
        ],
        "target": {"point": list(point), "box": list(box)},
        "kind": "habit" if habit else "generic",
        "answer_from_target": True,
    }


def synthesize(
    out: str | Path,
    users: int,
    per_user: int,
    habit_fraction: float = 0.3,
    seed: int = 0,
    layout: Literal["random", "fixed", "free", "jitter"] = "random",
    sizes: list[tuple[int, int]] | None = None,
    counts: dict[int, int] | None = None,
    others: tuple[int, int] = (1, 3),
) -> Path:
    """Write `users` user_<id>.pkl files (ids 1..users) of `per_user` samples each, images under images/.
    `counts` gives chosen users more samples (the demo's held-out users get more test screens, so that
    one screen is a small fraction of a point); the first `per_user` and every other user's are unchanged.

    layout "random" puts a generic sample's button on any cell (the model must look); "fixed" puts each
    label on its home cell (the instruction alone says where: a quick task for tests); "free" places
    elements of varied sizes at continuous positions (where a click reward has something to teach), the
    target among `others` (a range) other elements. `sizes`: the screenshot sizes to draw from (default:
    desktop, laptop, QHD and phone screens).
    """
    out = Path(out)
    rng = random.Random(seed)
    habits = [UserHabits.draw(u, rng) for u in range(1, users + 1)]
    for user in habits:
        (out / "images" / f"user_{user.user_id:03d}").mkdir(parents=True, exist_ok=True)
        records = []
        for index in range(per_user):
            habit = rng.random() < habit_fraction
            path = f"images/user_{user.user_id:03d}/{index:05d}.png"
            records.append(_sample_record(user, rng, path, out, habit, layout, sizes or SCREEN_SIZES, others))
        # a user's extra samples come from their own generator: the others' data stays as without them
        extra = random.Random(f"{seed}-extra-{user.user_id}")
        for index in range(per_user, (counts or {}).get(user.user_id, per_user)):
            habit = extra.random() < habit_fraction
            path = f"images/user_{user.user_id:03d}/{index:05d}.png"
            records.append(
                _sample_record(user, extra, path, out, habit, layout, sizes or SCREEN_SIZES, others)
            )
        with (out / f"user_{user.user_id}.pkl").open("wb") as handle:
            pickle.dump(records, handle, protocol=4)
    (out / "habits.txt").write_text(
        "\n".join(
            f"user {h.user_id}: aliases {h.aliases}; '{h.habit_phrase}' -> {h.favourite} at cell {h.favourite_cell}"
            for h in habits
        )
        + "\n"
    )
    return out
