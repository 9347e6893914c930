"""data.image_cache: screenshots decoded and resized once, with exactly the pixel values of the uncached path."""

import os

import pytest
import torch

from pigg.data import image_cache as cache_module
from pigg.data.image_cache import ImageCache
from pigg.data.readers import read_samples
from pigg.data.render import Renderer
from pigg.models.families import QWEN3_VL
from pigg.models.loading import load_processor


@pytest.fixture
def renderers(tiny_model, tmp_path):
    processor = load_processor(str(tiny_model), QWEN3_VL)
    cache = ImageCache(tmp_path / "cache", processor.image_processor)
    return Renderer(processor, QWEN3_VL), Renderer(processor, QWEN3_VL, image_cache=cache), cache


def test_cached_samples_encode_to_the_same_tensors(synth_data, renderers, monkeypatch):
    plain, cached, cache = renderers
    samples = read_samples(synth_data, users=None).samples[:6]  # mixed screen sizes, phone included
    expected = [plain.encode(s) for s in samples]
    first = [cached.encode(s) for s in samples]  # fills the cache
    assert len(list(cache.folder.glob("*/*.npy"))) == 6
    monkeypatch.setattr(cache_module, "load_image", lambda *a: pytest.fail("decoded a cached image"))
    second = [cached.encode(s) for s in samples]  # reads it back without decoding
    for want, *got in zip(expected, first, second, strict=True):
        for encoded in got:
            assert encoded.keys() == want.keys()
            for key in want:
                assert torch.equal(encoded[key], want[key]), key


def test_a_changed_file_or_a_damaged_entry_is_not_served(synth_data, renderers):
    plain, cached, cache = renderers
    sample = read_samples(synth_data, users=None).samples[0]
    cached.encode(sample)
    (entry,) = cache.folder.glob("*/*.npy")
    entry.write_bytes(b"not an array")  # a damaged entry is rebuilt
    assert torch.equal(cached.encode(sample)["pixel_values"], plain.encode(sample)["pixel_values"])
    image = synth_data / sample.image_refs()[0]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file changed
    cached.encode(sample)
    assert len(list(cache.folder.glob("*/*.npy"))) == 2
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_missing_image_is_still_named(synth_data, renderers, tmp_path):
    from pigg.data.sample import Sample
    from pigg.errors import DataError

    _, cached, _ = renderers
    sample = read_samples(synth_data, users=None).samples[0]
    messages = [dict(m) for m in sample.messages]
    messages[0] = {
        "role": "user",
        "content": [{"type": "image", "image": "gone.png"}, {"type": "text", "text": "x"}],
    }
    broken = Sample(**{**sample.__dict__, "messages": messages, "base_dir": tmp_path})
    with pytest.raises(DataError, match="gone.png"):
        cached.encode(broken)


def test_the_cache_folder_setting(monkeypatch, tmp_path):
    from pathlib import Path

    from pigg.data.image_cache import cache_folder

    monkeypatch.setenv("PIGG_CACHE", str(tmp_path / "c"))
    assert cache_folder("auto") == cache_folder(True) == tmp_path / "c" / "images"
    monkeypatch.delenv("PIGG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_folder("auto") == tmp_path / "x" / "pigg" / "images"
    assert cache_folder(None) is None and cache_folder(False) is None
    assert cache_folder("some/where") == Path("some/where")


def test_an_unwritable_cache_warns_and_training_data_is_unchanged(synth_data, tiny_model, tmp_path, capsys):
    processor = load_processor(str(tiny_model), QWEN3_VL)
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    cached = Renderer(processor, QWEN3_VL, image_cache=ImageCache(blocked, processor.image_processor))
    plain = Renderer(processor, QWEN3_VL)
    samples = read_samples(synth_data, users=None).samples[:2]
    for sample in samples:
        assert torch.equal(cached.encode(sample)["pixel_values"], plain.encode(sample)["pixel_values"])
    assert capsys.readouterr().out.count("not written") == 1  # said once, not per image
