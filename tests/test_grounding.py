"""Coordinates, answer parsing and click scoring: the arithmetic behind every accuracy pigg reports."""

from __future__ import annotations

import json

import pytest

from conftest import asset
from pigg.data.sample import Target
from pigg.models.coords import from_model, processor_resize, to_model
from pigg.models.families import QWEN2_5_VL, QWEN3_VL
from pigg.tasks.grounding import ClickScore, breakdown, inside, parse_click, score_click

REAL_SIZES = [(1920, 1080), (2560, 1440), (1170, 2532), (1366, 768), (1280, 800), (3840, 2160)]


def real_image_processor(folder: str):
    """The image processor of a real Qwen checkpoint, from its preprocessor_config.json."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    raw = json.loads((asset(folder) / "preprocessor_config.json").read_text())
    if "size" not in raw:  # Qwen2.5-VL writes min_pixels / max_pixels
        raw["size"] = {"shortest_edge": raw["min_pixels"], "longest_edge": raw["max_pixels"]}
    return Qwen2VLImageProcessorPil(
        size=raw["size"], patch_size=raw["patch_size"], merge_size=raw["merge_size"]
    )


@pytest.mark.parametrize("size", REAL_SIZES)
def test_qwen3_vl_relative_coordinates_round_trip(size):
    processor = real_image_processor("qwen3-vl-8b-instruct")
    width, height = size
    # Model → pixels → model is exact for every value on the axis.
    for value in range(0, 1001, 7):
        px = from_model((value, value), size, QWEN3_VL, processor)
        assert to_model(px, size, QWEN3_VL, processor) == (value, value)
    # Pixels → model → pixels lands within half a model unit.
    for x, y in [(0, 0), (width - 1, height - 1), (width / 3, height / 7), (123.4, 456.7 % height)]:
        back = from_model(to_model((x, y), size, QWEN3_VL, processor), size, QWEN3_VL, processor)
        # + 1e-9: float64 rounding of a pixel coordinate (~1e-13); the bound itself is half a model unit
        assert abs(back[0] - x) <= width / 2000 + 1e-9
        assert abs(back[1] - y) <= height / 2000 + 1e-9
    # Known values: the screen centre is (500, 500); the corner is 1000 whatever the size.
    assert to_model((width / 2, height / 2), size, QWEN3_VL, processor) == (500, 500)
    assert to_model((width, height), size, QWEN3_VL, processor) == (1000, 1000)


def test_qwen3_vl_999_convention_and_out_of_range_answers_are_clamped():
    processor = real_image_processor("qwen3-vl-8b-instruct")
    size = (1920, 1080)
    # pytest.approx's default tolerance (relative 1e-6) on float64 arithmetic of hand-written numbers: no CPU
    # changes IEEE sums and quotients of a few terms (noise ~1e-16); a wrong formula moves them by more than 1e-2.
    assert from_model((999, 999), size, QWEN3_VL, processor) == pytest.approx((1918.08, 1078.92))
    assert from_model((1200, -5), size, QWEN3_VL, processor) == (1920, 0)
    assert to_model((2000, -1), size, QWEN3_VL, processor) == (1000, 0)


@pytest.mark.parametrize("size", REAL_SIZES)
def test_qwen2_5_vl_resized_pixel_coordinates_invert_the_real_resize(size):
    processor = real_image_processor("qwen2.5-vl-7b-instruct")
    width, height = size
    new_w, new_h = processor_resize(processor, width, height)
    assert new_w % 28 == 0 and new_h % 28 == 0
    # The far corner of the screenshot is the far corner of the resized image.
    assert to_model((width, height), size, QWEN2_5_VL, processor) == (new_w, new_h)
    for value in range(0, min(new_w, new_h) + 1, 13):
        px = from_model((value, value), size, QWEN2_5_VL, processor)
        assert to_model(px, size, QWEN2_5_VL, processor) == (value, value)
    x, y = width * 0.37, height * 0.81
    back = from_model(to_model((x, y), size, QWEN2_5_VL, processor), size, QWEN2_5_VL, processor)
    # + 1e-9: float64 rounding (~1e-13); the bound is half a resized pixel, a bug is a whole one or more
    assert abs(back[0] - x) <= width / new_w / 2 + 1e-9
    assert abs(back[1] - y) <= height / new_h / 2 + 1e-9


def test_qwen2_5_vl_known_resize():
    processor = real_image_processor("qwen2.5-vl-7b-instruct")
    # 1920x1080 → 1932x1092 (nearest multiples of 28); a click at the centre says (966, 546).
    assert processor_resize(processor, 1920, 1080) == (1932, 1092)
    assert to_model((960, 540), (1920, 1080), QWEN2_5_VL, processor) == (966, 546)
    # 3840x2160 (8.3M pixels) is under max_pixels (12.8M), so it keeps nearly its size.
    assert processor_resize(processor, 3840, 2160) == (3836, 2156)


@pytest.mark.parametrize(
    "answer, point, form",
    [
        ("(512, 300)", (512, 300), "point"),
        ("[512, 300]", (512, 300), "point"),
        ("The login button is at (512,300).", (512, 300), "point"),
        ('{"point": [512, 300]}', (512, 300), "point"),
        ('{"point_2d": [512, 300], "label": "login"}', (512, 300), "point"),
        ('{"x": 512, "y": 300}', (512, 300), "named"),
        ("click(x=512, y=300)", (512, 300), "named"),
        ("pyautogui.click(x=512.5, y=300.25)", (512.5, 300.25), "named"),
        ("[100, 200, 300, 400]", (200, 300), "box"),
        ('{"bbox_2d": [10, 20, 30, 60]}', (20, 40), "box"),
        ("box (0, 0, 1000, 500) then", (500, 250), "box"),
        ("first (120, 40) then (200, 90)", (120, 40), "point"),
    ],
)
def test_parser_reads_the_forms_models_produce(answer, point, form):
    parsed = parse_click(answer)
    assert parsed is not None
    assert parsed.point == point
    assert parsed.form == form


@pytest.mark.parametrize(
    "junk", ["", "I cannot see a login button.", "(512)", "[a, b]", "x=5", "((((", "1, 2"]
)
def test_parser_returns_none_on_junk(junk):
    assert parse_click(junk) is None


def test_scoring_inside_edge_outside_and_radius():
    box = (100.0, 200.0, 300.0, 260.0)
    target = Target(point=(200.0, 230.0), box=box)
    size = (1000, 1000)
    assert score_click((200.0, 230.0), target, size)[0] is True  # the centre
    assert score_click((100.0, 260.0), target, size)[0] is True  # on the edge counts as inside
    assert score_click((300.0, 200.0), target, size)[0] is True  # the opposite corner
    hit, dist, frac = score_click((300.5, 230.0), target, size)  # half a pixel outside
    assert hit is False and dist == pytest.approx(100.5) and frac == pytest.approx(100.5 / 1414.2135623)
    assert score_click(None, target, size) == (False, None, None)
    assert inside((99.999, 230.0), box) is False
    # No box: within radius * diagonal of the point. Diagonal of 3000x4000 is 5000; radius 0.01 → 50 px.
    point_only = Target(point=(1000.0, 1000.0))
    assert score_click((1030.0, 1040.0), point_only, (3000, 4000), radius=0.01)[0] is True  # 50 px away
    assert score_click((1030.0, 1041.0), point_only, (3000, 4000), radius=0.01)[0] is False


def test_breakdown_counts_parse_failures_per_user_and_kind():
    def score(user, kind, hit, point):
        return ClickScore(
            "f#0",
            user,
            kind,
            "raw",
            point,
            (0, 0),
            None,
            (100, 100),
            hit,
            1.0 if point else None,
            0.01 if point else None,
        )

    scores = [
        score(1, "habit", True, (1, 1)),
        score(1, "generic", False, None),
        score(2, "generic", True, (2, 2)),
    ]
    out = breakdown(scores)
    assert out["overall"]["accuracy"] == pytest.approx(2 / 3)
    assert out["overall"]["parse_failures"] == 1
    assert out["per_user"]["1"]["accuracy"] == 0.5
    assert out["per_user"]["2"]["accuracy"] == 1.0
    assert out["per_kind"]["generic"]["samples"] == 2
    assert out["overall"]["median_distance_px"] == 1.0


def test_model_references_follow_adapter_chains_to_the_base(tmp_path, tiny_model):
    from pigg.infer import base_of, resolve_model

    def adapter(folder, base):
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
        return folder

    # A LoRA global run over the tiny base, with a user's adapter over the run.
    lora_run = adapter(tmp_path / "lora_run", tiny_model)
    (lora_run / "pigg_run.json").write_text(json.dumps({"base_model": str(tiny_model)}))
    adapter(lora_run / "users" / "3", lora_run)
    ref = resolve_model(str(lora_run), user=3)
    assert ref.base == str(tiny_model)
    assert ref.adapters == (str(lora_run), str(lora_run / "users" / "3"))
    assert ref.label == "lora_run+user3" and ref.run_dir == lora_run
    assert resolve_model(str(lora_run / "users" / "3")).adapters == ref.adapters
    assert base_of(ref).base == str(tiny_model) and base_of(ref).adapters == ()

    # A full run is its own base weights; zero-shot is the base recorded in the run.
    full_run = tmp_path / "full_run"
    full_run.mkdir()
    (full_run / "pigg_run.json").write_text(json.dumps({"base_model": str(tiny_model)}))
    adapter(full_run / "users" / "5", full_run)
    ref = resolve_model(str(full_run), user=5)
    assert ref.base == str(full_run) and ref.adapters == (str(full_run / "users" / "5"),)
    assert base_of(ref).base == str(tiny_model)
