"""What trains and how: freezing the vision side, LoRA targets on the language model, parameter counts.

Module names come from the model family; nothing here hard-codes a path.
"""

from __future__ import annotations

import re

from torch import nn

from pigg.config import LoraSection
from pigg.models.families import Family


def freeze_vision(model: nn.Module, family: Family) -> int:
    """Freeze the vision tower and the projector (seed 000); returns how many tensors were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if _under(name, family.vision_tower):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def llm_linear_pattern(model: nn.Module, family: Family) -> str:
    """A regex (peft full-match) naming every nn.Linear inside the LLM decoder layers, and nothing else.

    peft's "all-linear" would also wrap the vision tower and the projector of Qwen-VL models.
    """
    layers = re.escape(family.llm_layers)
    suffixes = set()
    for name, module in model.named_modules():
        match = re.fullmatch(rf"{layers}\.\d+\.(.+)", name)
        if match and isinstance(module, nn.Linear):
            suffixes.add(match.group(1))
    if not suffixes:
        raise ValueError(f"no linear layers found under {family.llm_layers}; is this a {family.name} model?")
    alternatives = "|".join(re.escape(s) for s in sorted(suffixes))
    return rf"{layers}\.\d+\.(?:{alternatives})"


def is_aligner(name: str, family: Family) -> bool:
    return any(_under(name, prefix) for prefix in family.projector)


def apply_method(
    model: nn.Module,
    family: Family,
    method: str,
    lora: LoraSection,
    vision: str = "frozen",
    aligner: str = "frozen",
) -> nn.Module:
    """Freeze the vision side (unless `vision` / `aligner` say "full"); for LoRA wrap the LLM's linear
    layers, for full train the whole LLM."""
    freeze_vision(model, family)
    if method == "full":
        for name, param in model.named_parameters():
            if not _under(name, family.vision_tower):
                param.requires_grad_(True)
            elif is_aligner(name, family):
                param.requires_grad_(aligner == "full")
            else:
                param.requires_grad_(vision == "full")
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_modules=llm_linear_pattern(model, family),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; shared (tied) tensors are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def trainable_line(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    return f"trainable params: {trainable:,} / {total:,} ({100 * trainable / total:.2f}%)"
