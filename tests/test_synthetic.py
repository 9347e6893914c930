"""The synthetic users: real screen sizes, answers that agree with the targets, habits that differ per user."""

import re

from PIL import Image

from pigg.data.readers import read_samples
from pigg.data.synth.screens import GRID, SCREEN_SIZES, cell_centre


def test_synthetic_users_are_read_by_the_real_reader(synth_data):
    result = read_samples(synth_data, users=None)
    assert not result.problems
    assert sorted({s.user_id for s in result.samples}) == [1, 2, 3]
    assert len(result.samples) == 24
    for sample in result.samples:
        image = Image.open(synth_data / sample.image_refs()[0])
        assert image.size in SCREEN_SIZES
        x1, y1, x2, y2 = sample.target.box
        px, py = sample.target.point
        assert x1 < px < x2 and y1 < py < y2
        rx, ry = map(int, re.fullmatch(r"\((\d+), (\d+)\)", sample.answer()).groups())
        # the answer, in Qwen3-VL's 0-1000 coordinates, maps back inside the target box
        assert x1 <= rx / 1000 * image.width <= x2 and y1 <= ry / 1000 * image.height <= y2


def test_targets_sit_on_the_nine_grid_points(synth_data):
    answers = {s.answer() for s in read_samples(synth_data, users=None).samples}
    grid_answers = {
        f"({round(cell_centre(c, 1, 1)[0] * 1000)}, {round(cell_centre(c, 1, 1)[1] * 1000)})" for c in GRID
    }
    assert answers <= grid_answers


def test_habit_samples_point_at_each_users_own_favourite_cell(synth_data):
    samples = read_samples(synth_data, users=None).samples
    favourite = {}
    for sample in samples:
        if sample.meta.get("kind") == "habit":
            favourite.setdefault(sample.user_id, set()).add(sample.answer())
    assert favourite and all(len(answers) == 1 for answers in favourite.values())


def test_screen_size_can_be_fixed_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from pigg.cli import app

    out = tmp_path / "d"
    result = CliRunner().invoke(
        app, ["data", "synth", str(out), "--users", "1", "--per-user", "4", "--screen", "1280x800"]
    )
    assert result.exit_code == 0, result.output
    samples = read_samples(out, users=None).samples
    assert [Image.open(out / s.image_refs()[0]).size for s in samples] == [(1280, 800)] * 4
    bad = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "e"), "--screen", "1280by800"])
    assert bad.exit_code != 0 and "1280by800" in str(bad.exception or bad.output)


def test_the_free_layout_puts_targets_of_varied_sizes_anywhere(tmp_path):
    """Where a click reward has something to teach: targets off the grid, of many sizes, icons among them."""
    from pigg.data.synth.screens import synthesize

    folder = synthesize(tmp_path / "free", users=3, per_user=20, seed=5, layout="free")
    samples = read_samples(folder, users=None).samples
    answers, widths = set(), set()
    for sample in samples:
        image = Image.open(folder / sample.image_refs()[0])
        x1, y1, x2, y2 = sample.target.box
        assert 0 <= x1 < x2 <= image.width and 0 < y1 < y2 <= image.height
        rx, ry = map(int, re.fullmatch(r"\((\d+), (\d+)\)", sample.answer()).groups())
        assert x1 <= rx / 1000 * image.width <= x2 and y1 <= ry / 1000 * image.height <= y2
        answers.add(sample.answer())
        widths.add(round((x2 - x1) / image.width, 2))
    assert len(answers) > 50 and len(widths) > 20  # continuous positions and sizes, not nine cells
    assert {s.meta["kind"] for s in samples} == {"habit", "generic"}
    assert any(s.instruction().endswith(" icon") for s in samples)


def test_the_jitter_layout_keeps_home_cells_but_moves_and_sizes_the_elements(tmp_path):
    """The demo's RL screens: the instruction still says which cell (each label has its home), but the
    element, a wide or narrow button or a small icon, sits anywhere wholly inside that cell."""
    from pigg.data.synth.screens import _TOP, HOME_CELLS, synthesize

    folder = synthesize(tmp_path / "jitter", users=3, per_user=30, seed=2, layout="jitter")
    samples = read_samples(folder, users=None).samples
    offsets, widths, homes = set(), set(), 0
    for sample in samples:
        image = Image.open(folder / sample.image_refs()[0])
        w, h = image.size
        x1, y1, x2, y2 = sample.target.box
        col, row = int(3 * (x1 + x2) / 2 / w), int(3 * ((y1 + y2) / 2 / h - _TOP) / (1 - _TOP))
        left, top = col * w / 3, (_TOP + row * (1 - _TOP) / 3) * h
        assert left <= x1 < x2 <= left + w / 3 and top <= y1 < y2 <= top + (1 - _TOP) * h / 3  # in its cell
        rx, ry = map(int, re.fullmatch(r"\((\d+), (\d+)\)", sample.answer()).groups())
        assert x1 <= rx / 1000 * w <= x2 and y1 <= ry / 1000 * h <= y2
        cx, cy = cell_centre((col, row), w, h)
        offsets.add(
            (round((sample.target.point[0] - cx) / w, 2), round((sample.target.point[1] - cy) / h, 2))
        )
        widths.add(round((x2 - x1) / w, 2))
        label = next((name for name in HOME_CELLS if name.lower() in sample.instruction().lower()), None)
        if sample.meta["kind"] == "generic" and label:
            assert HOME_CELLS[label] == (col, row)
            homes += 1
    assert len(offsets) > 40 and len(widths) > 15 and homes > 30  # off the cell centres, many sizes
    assert any(s.instruction().endswith(" icon") for s in samples)


def test_synth_others_takes_a_count_or_a_range(tmp_path):
    from typer.testing import CliRunner

    from pigg.cli import app

    args = ["data", "synth", str(tmp_path / "f"), "--users", "1", "--per-user", "3", "--layout", "free"]
    assert CliRunner().invoke(app, [*args, "--others", "0"]).exit_code == 0
    bad = CliRunner().invoke(app, [*args, "--others", "3-1"])
    assert bad.exit_code != 0 and "--others '3-1': write a count or a range" in str(
        bad.exception or bad.output
    )
