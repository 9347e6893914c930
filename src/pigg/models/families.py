"""What each supported model family is made of. The only place in pigg that knows module names.

Looked up by the config's `model_type`, never by regex on a model's name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pigg.errors import ConfigError

CoordinateConvention = Literal["relative_1000", "resized_pixels"]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    # Module paths as they appear in `named_modules()` of the *ForConditionalGeneration model.
    vision_tower: str  # everything of the vision side, projector included, lives under this prefix
    vision_blocks: str
    projector: tuple[str, ...]  # the aligner: merges vision features into LLM space
    llm_layers: str
    embeddings: str
    lm_head: str
    # Chat markup: a trained span runs from after `assistant_header` up to and including `turn_end`.
    assistant_header: str
    turn_end: str
    image_pad: str
    # Whether the chat template renders a system turn itself (then `system_turns: auto` keeps it).
    renders_system_turn: bool
    coordinates: CoordinateConvention


QWEN3_VL = Family(
    name="qwen3_vl",
    model_types=("qwen3_vl",),
    vision_tower="model.visual",
    vision_blocks="model.visual.blocks",
    projector=("model.visual.merger", "model.visual.deepstack_merger_list"),
    llm_layers="model.language_model.layers",
    embeddings="model.language_model.embed_tokens",
    lm_head="lm_head",
    assistant_header="<|im_start|>assistant\n",
    turn_end="<|im_end|>",
    image_pad="<|image_pad|>",
    renders_system_turn=True,
    coordinates="relative_1000",
)

# Same module layout and chat markup; one projector (no deepstack), pixel coordinates. Its template adds
# "You are a helpful assistant." when a conversation has no system turn.
QWEN2_5_VL = replace(
    QWEN3_VL,
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    projector=("model.visual.merger",),
    coordinates="resized_pixels",
)

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN3_VL, QWEN2_5_VL)}


def family_for_model_type(model_type: str) -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise ConfigError(f"model_type {model_type!r} is not supported; pigg knows: {known}")


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
