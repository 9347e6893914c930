"""Seed 004's classification pieces: strict answer parsing, the metrics against hand-computed values, the
report, and the synthetic news set."""

from __future__ import annotations

import json
from statistics import mean

import pytest

from pigg.data.labels import format_label, parse_label
from pigg.data.synth.news import LABELS, synthesize_news
from pigg.tasks.classify import UNPARSED, confusion_png, markdown, score_labels

NEWS = ["World", "Sports", "Business", "Sci/Tech"]


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ('{"category":"World"}', "World"),
        ('{"category": "sci/tech"}', "Sci/Tech"),
        (" Sports.\n", "Sports"),
        ('"business"', "Business"),
        ("World news", None),  # mentions a label: not that label
        ("Sports or World", None),
        ('{"category": "Weather"}', None),
        ('{"category": "World", "confidence": 0.9}', None),
        ('{"label": "World"}', None),
        ('{"category": "World"', None),  # cut off
        ("", None),
    ],
)
def test_answers_are_read_strictly(answer, label):
    assert parse_label(answer, NEWS) == label


def test_the_trained_answer_reads_back_as_its_label():
    for label in NEWS:
        assert format_label(label) == json.dumps({"category": label}, separators=(",", ":"))
        assert parse_label(format_label(label), NEWS) == label


def test_metrics_match_hand_computed_values_with_a_class_never_predicted_and_parse_failures():
    gold = ["A", "A", "A", "B", "B", "C", "C", "D", "D", "D"]
    pred = ["A", "A", "B", "B", None, "A", "C", "B", None, "B"]
    score = score_labels(gold, pred, ["A", "B", "C", "D"])
    assert score.confusion == [[2, 1, 0, 0, 0], [0, 1, 0, 0, 1], [1, 0, 1, 0, 0], [0, 2, 0, 0, 1]]
    # pytest.approx's default tolerance (relative 1e-6) on float64 arithmetic of hand-written numbers: no CPU
    # changes IEEE sums and quotients of a few terms (noise ~1e-16); a wrong formula moves them by more than 1e-2.
    assert score.accuracy == pytest.approx(0.4) and score.parse_failures == 2 and score.total == 10
    expected = {  # precision, recall, F1, support
        "A": (2 / 3, 2 / 3, 2 / 3, 3),
        "B": (1 / 4, 1 / 2, 1 / 3, 2),
        "C": (1.0, 1 / 2, 2 / 3, 2),
        "D": (0.0, 0.0, 0.0, 3),  # never predicted: precision 0, not undefined
    }
    for c in score.per_class:
        assert (c.precision, c.recall, c.f1) == pytest.approx(expected[c.label][:3]), c.label
        assert c.support == expected[c.label][3]
    assert score.macro_f1 == pytest.approx(5 / 12)  # mean over all four labels, D's 0 included


def test_labels_outside_the_configured_set_are_an_error():
    with pytest.raises(ValueError, match=r"\['E'\] are not among the configured labels"):
        score_labels(["A", "E"], ["A", "A"], ["A", "B"])
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        score_labels(["A", "B"], ["A"], ["A", "B"])


def test_report_has_every_model_and_class_and_a_confusion_png(tmp_path):
    base = score_labels(["A", "B", "B"], ["A", None, "A"], ["A", "B"])
    tuned = score_labels(["A", "B", "B"], ["A", "B", "B"], ["A", "B"])
    table = markdown({"base": base, "tuned": tuned})
    assert "| accuracy | 33.33% | 100.00% |" in table and "| parse failures | 1 | 0 |" in table
    assert (
        "| B F1 | 0.00% | 100.00% |" in table and "| tuned | B | 100.00% | 100.00% | 100.00% | 2 |" in table
    )
    png = confusion_png({"base": base, "tuned": tuned}, tmp_path / "confusion.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    width, height = Image.open(png).size
    assert width > 2 * 400 and height > 300  # two panels side by side
    assert UNPARSED == "(unparsed)"


def test_synthetic_news_is_balanced_spread_like_seed_004_and_reads_as_valid_samples(tmp_path, tiny_config):
    from pigg.data.readers import read_samples
    from pigg.data.validate import validate
    from pigg.train.build import load_renderer

    path = synthesize_news(tmp_path / "news.jsonl", 400, seed=3)
    assert path.read_text() == synthesize_news(tmp_path / "again.jsonl", 400, seed=3).read_text()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted({r["label"] for r in rows}) == sorted(LABELS)
    assert all(sum(r["label"] == label for r in rows) == 100 for label in LABELS)
    words = [len(r["messages"][1]["content"].split()) - 5 for r in rows]  # minus the prompt's words
    assert 80 <= mean(words) <= 110 and max(words) > 180 and min(words) >= 15 and max(words) <= 380
    assert rows[0]["messages"][0]["role"] == "system"

    read = read_samples(path, None)
    assert not read.problems and len(read.samples) == 400
    for sample in read.samples:
        assert parse_label(sample.answer(), list(LABELS)) == sample.meta["label"]
    _, _, renderer = load_renderer(tiny_config("data.max_length=4096"))
    report = validate(read.samples[:40], renderer, 4096)
    assert not report.problems and len(report.samples) == 40
