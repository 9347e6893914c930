"""Assistant-only labels, checked token by token on the real Qwen chat templates and on pigg's own."""

import pytest
import torch
from PIL import Image

from conftest import asset
from pigg.data.render import IGNORE_INDEX, Renderer
from pigg.data.sample import Sample
from pigg.errors import DataError
from pigg.models.families import QWEN2_5_VL, QWEN3_VL
from pigg.models.loading import load_processor


def _sample(turns):
    messages = []
    for i, (prompt, answer) in enumerate(turns):
        content = [{"type": "text", "text": prompt}]
        if i == 0:
            content.insert(0, {"type": "image", "image": Image.new("RGB", (320, 240), "white")})
        messages += [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    return Sample(messages=messages)


def _trained_runs(labels):
    """Contiguous runs of trained label values."""
    runs, current = [], []
    for value in labels:
        if value != IGNORE_INDEX:
            current.append(value)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _check(renderer, turns, expected_image_tokens):
    tok = renderer.processor.tokenizer
    encoded = renderer.encode(_sample(turns))
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    expected = [tok.encode(answer, add_special_tokens=False) + [end] for _, answer in turns]
    assert _trained_runs(labels) == expected
    # every trained token sits right where its label says, directly after "<|im_start|>assistant\n"
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    starts = [
        i for i in range(len(ids)) if labels[i] != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)
    ]
    for start in starts:
        assert ids[start - len(header) : start] == header
    for i, label in enumerate(labels):
        assert label in (IGNORE_INDEX, ids[i])
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert ids.count(pad) == expected_image_tokens
    assert all(labels[i] == IGNORE_INDEX for i in range(len(ids)) if ids[i] == pad)
    return ids, labels


TURNS = [("click the login button", "(512, 300)"), ("now the cancel button", "click(x=100, y=900)")]


def test_real_qwen3_vl_template_exact_labels():
    processor = load_processor(str(asset("qwen3-vl-8b-instruct")), QWEN3_VL)
    renderer = Renderer(processor, QWEN3_VL)
    ids, labels = _check(renderer, TURNS[:1], expected_image_tokens=80)
    # The real tokenizer's ids for "(512, 300)<|im_end|>": digits are single tokens (FACTS.md).
    assert _trained_runs(labels) == [[7, 20, 16, 17, 11, 220, 18, 15, 15, 8, 151645]]
    assert ids[-1] == 198 and labels[-1] == IGNORE_INDEX  # the newline after <|im_end|> is not trained


def test_real_qwen3_vl_multi_turn_trains_every_assistant_turn():
    processor = load_processor(str(asset("qwen3-vl-8b-instruct")), QWEN3_VL)
    _check(Renderer(processor, QWEN3_VL), TURNS, expected_image_tokens=80)


def test_real_qwen2_5_vl_template_with_its_default_system_turn():
    processor = load_processor(str(asset("qwen2.5-vl-7b-instruct")), QWEN2_5_VL)
    renderer = Renderer(processor, QWEN2_5_VL)
    # patch 14, merge 2: 320x240 resizes to 308x252 → 11x9 = 99 tokens
    ids, _ = _check(renderer, TURNS, expected_image_tokens=99)
    text = processor.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_pigg_tiny_template_exact_labels(tiny_model):
    processor = load_processor(str(tiny_model), QWEN3_VL)
    # the tiny processor caps images at 256*256 = 65,536 pixels: 320x240 shrinks to 288x192 → 9x6 = 54 tokens
    _check(Renderer(processor, QWEN3_VL), TURNS, expected_image_tokens=54)


def test_system_turn_policy(tiny_model):
    processor = load_processor(str(tiny_model), QWEN3_VL)
    sample = _sample(TURNS[:1])
    sample.messages.insert(0, {"role": "system", "content": [{"type": "text", "text": "be brief"}]})
    kept = processor.tokenizer.decode(Renderer(processor, QWEN3_VL, "keep").encode(sample)["input_ids"])
    moved = processor.tokenizer.decode(Renderer(processor, QWEN3_VL, "to_user").encode(sample)["input_ids"])
    assert kept.startswith("<|im_start|>system\nbe brief<|im_end|>")
    assert moved.startswith("<|im_start|>user\nbe brief<|im_end|>")


def test_batch_without_any_trained_token_is_an_error(tiny_model):
    processor = load_processor(str(tiny_model), QWEN3_VL)
    sample = Sample(
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello"}]}], source="x.pkl#3"
    )
    with pytest.raises(DataError, match=r"no trainable \(assistant\) token in batch \[x.pkl#3\]"):
        Renderer(processor, QWEN3_VL).collate([sample])


def test_collate_pads_right_and_masks_padding(tiny_model):
    processor = load_processor(str(tiny_model), QWEN3_VL)
    renderer = Renderer(processor, QWEN3_VL)
    batch = renderer.collate([_sample(TURNS[:1]), _sample(TURNS)])
    short = renderer.encode(_sample(TURNS[:1]))["input_ids"]
    assert batch["input_ids"].shape[0] == 2
    assert torch.equal(batch["input_ids"][0, : len(short)], short)
    assert (batch["labels"][0, len(short) :] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, len(short) :] == 0).all()
    assert batch["image_grid_thw"].shape == (2, 3)
