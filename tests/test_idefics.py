"""The Idefics families (Idefics3, Idefics2): a tiny model from a shrunken config, assistant-only masking on its chat markup,
tiled images batched as its processor batches them, and LoRA / selective training through the same code."""

from __future__ import annotations

import pytest
import torch

from conftest import caught, difference, within
from pigg.data.readers import read_samples
from pigg.data.render import IGNORE_INDEX, Renderer
from pigg.models.loading import load_model, load_processor


@pytest.fixture(scope="module", params=["idefics3", "idefics2"])
def tiny_idefics(request, tmp_path_factory):
    """Idefics3 (images split into 64-pixel tiles plus a global view) and Idefics2 (one resampled image of
    its own size): the same family code, two ways of cutting images."""
    from pigg.models.tiny import build_tiny

    return build_tiny(request.param, tmp_path_factory.mktemp("idefics") / f"tiny-{request.param}")


@pytest.fixture
def renderer(tiny_idefics):
    from pigg.models.loading import resolve_family

    family = resolve_family(str(tiny_idefics))
    return Renderer(load_processor(str(tiny_idefics), family), family)


def test_masking_trains_the_answer_after_assistant_and_never_the_tiles(renderer, synth_data):
    assert renderer.family.name in ("idefics3", "idefics2") and renderer.family.image_sizing == "tiles"
    tokenizer = renderer.processor.tokenizer
    sample = read_samples(synth_data, [1]).samples[0]
    encoded = renderer.encode(sample)
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    answer = renderer.messages(sample)[-1]["content"][0]["text"]
    assert trained == tokenizer.encode(" " + answer, add_special_tokens=False) + [
        tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    ]
    first = labels.index(trained[0])
    assert tokenizer.decode(ids[first - 2 : first]) == "Assistant:"
    image = tokenizer.convert_tokens_to_ids("<image>")
    tiles = encoded["pixel_values"].shape[1]  # Idefics3: split tiles plus the global view; 4 tokens each
    assert ids.count(image) == 4 * tiles and all(
        labels[i] == IGNORE_INDEX for i, t in enumerate(ids) if t == image
    )
    # relative 0-1000 coordinates, as pigg teaches Qwen3-VL: the target's pixels over its screen's size
    from pigg.data.sample import image_size
    from pigg.models.coords import to_relative_1000

    width, height = image_size(sample.image_refs()[0], sample.base_dir)
    assert answer == "({}, {})".format(*to_relative_1000(*sample.target.point, width, height))


# A batch's loss against its rows' (float32, tiles padded with zeros): noise 4.8e-7 (benchmarks/tolerances.py),
# bug 4.4e-2 (the second row's last trained token dropped, in the test).
IDEFICS_TOL = 1e-4


def test_a_batch_of_different_tile_counts_has_the_loss_of_its_rows(
    tiny_idefics, renderer, synth_data, tmp_path
):
    from PIL import Image

    from pigg.data.readers.rows import normalise_messages
    from pigg.data.sample import Sample

    wide, small = tmp_path / "wide.png", tmp_path / "small.png"
    Image.new("RGB", (256, 128), "red").save(wide)
    Image.new("RGB", (64, 64), "blue").save(small)
    samples = [
        Sample(normalise_messages([
            {"role": "user", "content": [{"type": "image", "image": str(path)}, {"type": "text", "text": "what colour"}]},
            {"role": "assistant", "content": colour},
        ]))
        for path, colour in ((wide, "red"), (small, "blue"))
    ]  # fmt: skip
    batch = renderer.collate(samples)
    rows = [renderer.collate([s]) for s in samples]
    # Idefics3: 9 and 17 tiles; Idefics2: one image each, 64x32 and 64x64 pixels: padded to the largest
    shapes = [r["pixel_values"].shape for r in rows]
    assert shapes[0] != shapes[1]
    assert batch["pixel_values"].shape == (2, *(max(s[d] for s in shapes) for d in range(1, 5)))
    model = load_model(str(tiny_idefics), torch.float32).eval()

    def summed(b):
        targets = (b["labels"][:, 1:] != IGNORE_INDEX).sum()
        with torch.no_grad():
            return model(**b).loss * targets, targets

    total, count = summed(batch)
    parts = [summed(r) for r in rows]
    rows_loss = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    within(f"idefics.batch_loss[{tiny_idefics.name}]", difference(total / count, rows_loss), IDEFICS_TOL)
    # the mutation it must fail on: the padded batch losing its second row's last trained token
    labels = batch["labels"].clone()
    labels[1, int((labels[1] != IGNORE_INDEX).nonzero().max())] = IGNORE_INDEX
    total, count = summed(batch | {"labels": labels})
    caught(f"idefics.batch_loss[{tiny_idefics.name}]", difference(total / count, rows_loss), IDEFICS_TOL)


def test_lora_and_selective_training_on_llamafactory_data_lower_the_loss(tiny_config, tiny_idefics, tmp_path):
    from pigg.data.synth.describe import synthesize_descriptions
    from pigg.errors import ConfigError
    from pigg.train.run import train

    described = synthesize_descriptions(tmp_path / "describe", 32)  # LLaMA-Factory's format
    cfg = tiny_config(
        f"model.name={tiny_idefics}", f"data.path={described}", "data.train_users=all", "train.method=lora", "train.max_steps=8", "train.learning_rate=3e-3",
        "train.batch_size=4", "vision.method=lora", "vision.blocks=last:1", "aligner=full",
        "data.max_length=1024", f"train.output_dir={tmp_path / 'run'}",
    )  # fmt: skip
    result = train(cfg)
    assert result.summary["family"] in ("idefics3", "idefics2")
    assert result.summary["last_loss"] < result.summary["first_loss"] - 0.3
    names = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert any("vision_model.encoder.layers.1" in n and "lora_" in n for n in names)
    assert not any("vision_model.encoder.layers.0" in n for n in names)
    assert any("connector" in n for n in names)
    with pytest.raises(ConfigError, match="packing is not supported for idefics"):
        train(tiny_config(f"model.name={tiny_idefics}", "data.packing=true", "data.max_length=1024",
                          f"train.output_dir={tmp_path / 'packed'}"))  # fmt: skip
