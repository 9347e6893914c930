"""Readers and the restricted unpickler."""

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from pigg.data.readers import read_samples
from pigg.data.readers.own import safe_load_pickle
from pigg.errors import DataError, UnsafePickleError


class _Payload:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _messages(image, answer="(1, 2)"):
    return [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "click"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "user_1.pkl"
    path.write_bytes(pickle.dumps([_messages("a.png"), _Payload(marker)]))
    with pytest.raises(UnsafePickleError) as err:
        read_samples(tmp_path, users=None)
    assert str(path) in str(err.value)
    assert "'posix.system'" in str(err.value) or "'os.system'" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_images_pickle_in_every_form_the_seed_used(tmp_path, protocol):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, format="PNG")
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "shot.png")
    opened = Image.open(tmp_path / "shot.png")  # a PngImageFile, pickled as its plugin class
    records = [
        _messages("shot.png"),
        _messages(buffer.getvalue()),
        _messages(Image.new("RGB", (40, 30))),
        _messages(opened),
        {"messages": _messages("shot.png"), "target": {"point": np.array([3.0, 4.0]), "box": (1, 2, 5, 6)}},
    ]
    (tmp_path / "user_7.pkl").write_bytes(pickle.dumps(records, protocol=protocol))
    result = read_samples(tmp_path, users=[7])
    assert not result.problems
    assert [s.user_id for s in result.samples] == [7] * 5
    assert result.samples[2].image_refs()[0].size == (40, 30)
    assert result.samples[4].target.point == (3.0, 4.0)
    assert result.samples[0].source == f"{tmp_path / 'user_7.pkl'}#0"


def test_user_selection_and_missing_users(tmp_path):
    for user in (1, 2, 3):
        (tmp_path / f"user_{user}.pkl").write_bytes(pickle.dumps([_messages("x.png")] * user))
    assert len(read_samples(tmp_path, users=[2, 3]).samples) == 5
    assert len(read_samples(tmp_path, users=None).samples) == 6
    with pytest.raises(DataError, match=r"no file for user\(s\) \[9\]"):
        read_samples(tmp_path, users=[1, 9])


def test_malformed_rows_are_reported_with_file_and_index(tmp_path):
    rows = [
        _messages("x.png"),
        "not a conversation",
        [{"role": "robot", "content": "hi"}],
        [{"role": "user"}],
    ]
    (tmp_path / "user_4.pkl").write_bytes(pickle.dumps(rows))
    result = read_samples(tmp_path, users=[4])
    assert len(result.samples) == 1
    sources = [p.source for p in result.problems]
    assert sources == [f"{tmp_path / 'user_4.pkl'}#{i}" for i in (1, 2, 3)]
    assert "role 'robot'" in result.problems[1].cause


def test_jsonl_reader_selects_users_and_reports_bad_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"user_id": 1, "messages": _messages("a.png")}),
        "{broken",
        json.dumps({"user_id": 2, "messages": _messages("b.png"), "target": {"point": [5, 6]}}),
        json.dumps({"messages": _messages("c.png")}),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = read_samples(path, users=[2])
    assert [s.user_id for s in result.samples] == [2]
    assert result.samples[0].base_dir == tmp_path
    assert [p.source for p in result.problems] == [f"{path}:2", f"{path}:4"]


def test_corrupt_pickle_names_the_file(tmp_path):
    (tmp_path / "user_1.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="user_1.pkl: not a readable pickle"):
        safe_load_pickle(tmp_path / "user_1.pkl")
