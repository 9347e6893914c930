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
    # Module paths as they appear in `named_modules()` of the model (*ForConditionalGeneration for the
    # vision-language families, *ForCausalLM for the text ones, whose vision fields are None / empty).
    vision_tower: str | None  # everything of the vision side, projector included, lives under this prefix
    vision_blocks: str | None
    projector: tuple[str, ...]  # the aligner: merges vision features into LLM space
    llm_layers: str
    embeddings: str
    lm_head: str
    # Chat markup: a trained span runs from after `assistant_header` up to and including `turn_end`.
    assistant_header: str
    turn_end: str
    image_pad: str | None
    # Whether the chat template renders a system turn itself (then `system_turns: auto` keeps it).
    renders_system_turn: bool
    coordinates: CoordinateConvention | None
    # How images become tokens: qwen (dynamic resolution: token counts follow from an image's header size,
    # so validation counts without decoding, and the image cache and packing apply) or tiles (Idefics3:
    # an image split into fixed tiles plus a global view; lengths are measured by rendering).
    image_sizing: Literal["qwen", "tiles"] = "qwen"

    @property
    def has_vision(self) -> bool:
        return self.vision_tower is not None


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

# Text-only causal LMs (seed 004): the decoder stack sits directly under `model`, the chat markup is the
# same. Qwen2.5's template adds "You are Qwen, created by Alibaba Cloud. ..." when no system turn is given;
# its templates take string contents only (Renderer flattens text items for them).
QWEN2 = Family(
    name="qwen2",
    model_types=("qwen2",),
    vision_tower=None,
    vision_blocks=None,
    projector=(),
    llm_layers="model.layers",
    embeddings="model.embed_tokens",
    lm_head="lm_head",
    assistant_header="<|im_start|>assistant\n",
    turn_end="<|im_end|>",
    image_pad=None,
    renders_system_turn=True,
    coordinates=None,
)
QWEN3 = replace(QWEN2, name="qwen3", model_types=("qwen3",))

# Idefics3 (SigLIP + Llama 3; SmolVLM has its layout): the vision encoder and the connector are siblings
# under `model`. Turns read "User:...<end_of_utterance>\nAssistant: answer<end_of_utterance>". It has no
# grounding convention of its own: pigg teaches it Qwen3-VL's relative 0-1000 coordinates.
IDEFICS3 = Family(
    name="idefics3",
    model_types=("idefics3",),
    vision_tower="model.vision_model",
    vision_blocks="model.vision_model.encoder.layers",
    projector=("model.connector",),
    llm_layers="model.text_model.layers",
    embeddings="model.text_model.embed_tokens",
    lm_head="lm_head",
    assistant_header="Assistant:",
    turn_end="<end_of_utterance>",
    image_pad="<image>",
    renders_system_turn=True,
    coordinates="relative_1000",
    image_sizing="tiles",
)

# Idefics2 (seed 003's model: SigLIP + a perceiver resampler + Mistral): Idefics3's layout and markup; its
# connector holds the resampler, and its images are not split by default.
IDEFICS2 = replace(IDEFICS3, name="idefics2", model_types=("idefics2",))

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN3_VL, QWEN2_5_VL, QWEN2, QWEN3, IDEFICS3, IDEFICS2)}


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
