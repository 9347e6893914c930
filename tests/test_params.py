"""Trainable-parameter counts of the real Qwen3-VL architectures, built on the meta device (no weights)."""

import pytest
import torch
from transformers import AutoConfig, Qwen3VLForConditionalGeneration

from conftest import asset
from pigg.config import LoraSection
from pigg.models.families import QWEN3_VL
from pigg.models.trainable import apply_method, count_parameters, llm_linear_pattern


def _meta_model(folder):
    config = AutoConfig.from_pretrained(asset(folder))
    with torch.device("meta"):
        return Qwen3VLForConditionalGeneration(config)


# (folder, method) -> (trainable, total). Seed 000 printed 41,943,040 (LoRA) and 8,222,674,944 (full) of
# 8,294,967,296; the real architecture gives these (docs/recipes.md explains the difference).
EXPECTED = {
    ("qwen3-vl-8b-instruct", "lora"): (21_823_488, 8_788_947_184),
    ("qwen3-vl-8b-instruct", "full"): (8_190_735_360, 8_767_123_696),
    ("qwen3-vl-4b-instruct", "lora"): (16_515_072, 4_454_330_880),
    ("qwen3-vl-4b-instruct", "full"): (4_022_468_096, 4_437_815_808),
}


@pytest.mark.parametrize(("folder", "method"), sorted(EXPECTED))
def test_trainable_counts_on_real_configs(folder, method):
    model = apply_method(_meta_model(folder), QWEN3_VL, method, LoraSection(r=8, alpha=32))
    assert count_parameters(model) == EXPECTED[(folder, method)]


def test_lora_count_follows_from_the_architecture():
    """r * (in + out) for q, k, v, o, gate, up, down in each of the 36 layers of the 8B LLM."""
    hidden, inter, kv = 4096, 12288, 8 * 128
    per_layer = 8 * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + inter) * 3)
    assert per_layer * 36 == EXPECTED[("qwen3-vl-8b-instruct", "lora")][0]


def test_lora_targets_only_llm_linear_layers():
    model = _meta_model("qwen3-vl-8b-instruct")
    pattern = llm_linear_pattern(model, QWEN3_VL)
    peft_model = apply_method(model, QWEN3_VL, "lora", LoraSection())
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert len(wrapped) == 36 * 7
    assert not any("visual" in n or "lm_head" in n or "embed" in n for n in wrapped)
    assert "q_proj" in pattern and "visual" not in pattern


@pytest.mark.parametrize(("vision", "aligner"), [("full", "frozen"), ("frozen", "full"), ("full", "full")])
def test_full_training_of_vision_and_aligner_is_per_part(vision, aligner):
    model = apply_method(
        _meta_model("qwen3-vl-8b-instruct"), QWEN3_VL, "full", LoraSection(), vision, aligner
    )
    state = {}
    for name, param in model.named_parameters():
        part = (
            "aligner"
            if name.startswith(("model.visual.merger", "model.visual.deepstack_merger_list"))
            else "vision"
            if name.startswith("model.visual.")
            else "llm"
        )
        state.setdefault(part, set()).add(param.requires_grad)
    assert state == {"llm": {True}, "vision": {vision == "full"}, "aligner": {aligner == "full"}}
