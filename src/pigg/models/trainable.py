"""What trains and how, per part: the vision blocks, the aligner (projector) and the LLM layers.

Each part is frozen, trained fully, or trained with LoRA, on all of its blocks/layers or a selection
("last:6", "18-23"). Indices are resolved on the model itself, so "last:6" is blocks 18-23 of
Qwen3-VL-4B's 24 and 21-26 of Qwen3-VL-8B's 27. When any part uses LoRA the model becomes a peft model:
LoRA targets are built from the selection, and fully trained parts become `modules_to_save` (saved with
the adapter). Module names come from the model family; nothing here hard-codes a path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from pigg.config import LoraSection
from pigg.errors import ConfigError
from pigg.models.families import Family

PARTS = ("vision", "aligner", "llm")
METHODS = ("frozen", "full", "lora")


def _under(name: str, prefix: str | None) -> bool:
    return prefix is not None and (name == prefix or name.startswith(prefix + "."))


def _base_name(name: str) -> str:
    """A parameter or module name without peft's wrapping, as in the plain model."""
    name = name.removeprefix("base_model.model.")
    return re.sub(r"\.(?:modules_to_save|original_module)\.[^.]+|\.base_layer", "", name)


def part_of(name: str, family: Family) -> str:
    """ "vision", "aligner" or "llm" for a parameter or module name (peft-wrapped or not)."""
    name = _base_name(name)
    if any(_under(name, prefix) for prefix in family.projector):
        return "aligner"
    return "vision" if _under(name, family.vision_tower) else "llm"


def resolve_selection(spec: str | int, count: int, key: str) -> list[int] | None:
    """Indices chosen by "all" (None: the whole part), "last:6", "18-23", "0,4,8-9" among `count`."""
    text = str(spec).strip().lower()
    if text == "all":
        return None
    kind = "vision blocks" if key.startswith("vision") else "LLM layers"
    valid = f"the model has {count} {kind} (0-{count - 1})"
    last = re.fullmatch(r"last\s*:\s*(\d+)", text)
    if last:
        k = int(last.group(1))
        if not 1 <= k <= count:
            raise ConfigError(f"{key}={spec!r}: last:{k} is out of range; {valid}")
        return list(range(count - k, count))
    chosen: set[int] = set()
    for piece in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", piece)
        if not match:
            raise ConfigError(f"{key}={spec!r}: write all, last:N, a range like 18-23 or a list like 0,4,8-9")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if lo > hi or hi >= count:
            raise ConfigError(f"{key}={spec!r}: {piece.strip()} is out of range; {valid}")
        chosen.update(range(lo, hi + 1))
    return sorted(chosen)


@dataclass
class PartPlan:
    part: str
    method: str  # frozen | full | lora
    indices: list[int] | None = None  # blocks/layers chosen; None: the whole part
    count: int = 0  # blocks/layers the part has (0 for the aligner)
    modules: list[str] = field(default_factory=list)  # module names covering what trains

    @property
    def selection(self) -> str:
        if self.method == "frozen":
            return "-"
        if self.indices is None:
            return "all"
        return (
            f"{self.indices[0]}-{self.indices[-1]}"
            if _contiguous(self.indices)
            else ",".join(map(str, self.indices))
        )


def _contiguous(indices: list[int]) -> bool:
    return indices == list(range(indices[0], indices[-1] + 1))


def _stack_length(model: nn.Module, path: str) -> int:
    return len(model.get_submodule(path))


def plan_parts(
    model: nn.Module,
    family: Family,
    llm: str,
    vision: str = "frozen",
    aligner: str = "frozen",
    vision_blocks: str = "all",
    llm_layers: str = "all",
) -> list[PartPlan]:
    """Resolve each part's method and selection on `model` (errors name the valid range)."""
    for key, method in (("llm.method", llm), ("vision.method", vision), ("aligner", aligner)):
        if method not in METHODS:
            raise ConfigError(f"{key}={method!r}: use one of {', '.join(METHODS)}")
    n_layers = _stack_length(model, family.llm_layers)
    layers = resolve_selection(llm_layers, n_layers, "llm.layers")
    top = dict(model.named_children())  # e.g. {"model": ..., "lm_head": ...}
    llm_root = family.llm_layers.rsplit(".", 1)[0]  # model.language_model (model for a text family)
    llm_all = [llm_root, *(name for name in top if name == family.lm_head.split(".")[0])]
    if not family.has_vision:
        for key, method in (("vision.method", vision), ("aligner", aligner)):
            if method != "frozen":
                raise ConfigError(f"{key}={method}: the {family.name} model is text-only; leave it frozen")
        vision_parts = [PartPlan("vision", "frozen"), PartPlan("aligner", "frozen")]
    else:
        n_blocks = _stack_length(model, family.vision_blocks)
        blocks = resolve_selection(vision_blocks, n_blocks, "vision.blocks")
        visual = model.get_submodule(family.vision_tower)
        vision_all = [
            f"{family.vision_tower}.{child}"
            for child, module in visual.named_children()
            if not any(_under(f"{family.vision_tower}.{child}", p) for p in family.projector)
            and any(True for _ in module.parameters())
        ]
        vision_parts = [
            PartPlan(
                "vision",
                vision,
                blocks,
                n_blocks,
                vision_all if blocks is None else [f"{family.vision_blocks}.{i}" for i in blocks],
            ),
            PartPlan("aligner", aligner, None, 0, list(family.projector)),
        ]
    return [
        *vision_parts,
        PartPlan(
            "llm",
            llm,
            layers,
            n_layers,
            llm_all if layers is None else [f"{family.llm_layers}.{i}" for i in layers],
        ),
    ]


def _linear_names(model: nn.Module, plan: PartPlan, family: Family) -> list[str]:
    """Every nn.Linear the part's LoRA wraps: inside the chosen blocks/layers (for "all", every block or
    layer: LoRA never wraps embeddings, the patch embedding or lm_head)."""
    if plan.part == "aligner":
        roots = plan.modules
    else:
        stack = family.vision_blocks if plan.part == "vision" else family.llm_layers
        indices = plan.indices if plan.indices is not None else range(plan.count)
        roots = [f"{stack}.{i}" for i in indices]
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(_under(name, root) and name != root for root in roots)
    ]


def lora_pattern(names: list[str]) -> str:
    """A compact peft full-match regex naming exactly `names`: "stack.(18|19).(qkv|proj)" per stack."""
    grouped: dict[str, tuple[set[str], set[str]]] = {}
    singles = []
    for name in names:
        match = re.fullmatch(r"(.+?)\.(\d+)\.(.+)", name)
        if match:
            indices, suffixes = grouped.setdefault(match.group(1), (set(), set()))
            indices.add(match.group(2))
            suffixes.add(match.group(3))
        else:
            singles.append(re.escape(name))
    alternatives = [
        rf"{re.escape(stack)}\.(?:{'|'.join(sorted(i, key=int))})\.(?:{'|'.join(re.escape(s) for s in sorted(sfx))})"
        for stack, (i, sfx) in sorted(grouped.items())
    ]
    pattern = "|".join(alternatives + singles)
    compiled = re.compile(pattern)
    wanted = set(names)
    assert all(compiled.fullmatch(n) for n in wanted)
    return pattern


def llm_linear_pattern(model: nn.Module, family: Family) -> str:
    """A regex (peft full-match) naming every nn.Linear inside the LLM decoder layers, and nothing else.

    peft's "all-linear" would also wrap the vision tower and the projector of Qwen-VL models.
    """
    plan = PartPlan("llm", "lora", None, _stack_length(model, family.llm_layers))
    names = _linear_names(model, plan, family)
    if not names:
        raise ValueError(f"no linear layers found under {family.llm_layers}; is this a {family.name} model?")
    return lora_pattern(names)


def _saveable(model: nn.Module, names: list[str]) -> list[str]:
    """peft wraps modules, not containers: a ModuleList (Qwen3-VL's deepstack mergers) is named by its
    elements."""
    out = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.ModuleList | nn.ModuleDict):
            out.extend(_saveable(model, [f"{name}.{child}" for child, _ in module.named_children()]))
        else:
            out.append(name)
    return out


def modules_to_save(model: nn.Module, plans: list[PartPlan]) -> list[str]:
    """The modules peft saves whole with the adapter: those of the fully trained parts."""
    return _saveable(model, [m for p in plans if p.method == "full" for m in p.modules])


def apply_plan(model: nn.Module, family: Family, plans: list[PartPlan], lora: LoraSection) -> nn.Module:
    """Freeze everything, then train each part as planned. With any LoRA part the result is a peft model
    whose fully trained parts are `modules_to_save`."""
    for param in model.parameters():
        param.requires_grad_(False)
    lora_names = [n for p in plans if p.method == "lora" for n in _linear_names(model, p, family)]
    full = [p for p in plans if p.method == "full"]
    if not lora_names:
        for name, param in model.named_parameters():
            if any(_under(name, m) for p in full for m in p.modules):
                param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias=lora.bias,
        target_modules=lora_pattern(lora_names),
        modules_to_save=modules_to_save(model, plans) or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def apply_method(
    model: nn.Module,
    family: Family,
    method: str,
    lora: LoraSection,
    vision: str = "frozen",
    aligner: str = "frozen",
    vision_blocks: str = "all",
    llm_layers: str = "all",
) -> nn.Module:
    """Train the LLM by `method` (lora | full | frozen), the vision blocks by `vision`, the aligner by
    `aligner`; seed 000's default freezes the whole vision side."""
    plans = plan_parts(model, family, method, vision, aligner, vision_blocks, llm_layers)
    return apply_plan(model, family, plans, lora)


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


def count_by_part(model: nn.Module, family: Family) -> dict[str, tuple[int, int]]:
    """Per part: (trainable, total). Totals count the plain model's weights once (not peft's frozen
    copies of modules_to_save, nor the LoRA matrices); trainable counts what the optimizer updates."""
    seen: set[int] = set()
    counts = {part: [0, 0] for part in PARTS}
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        part = part_of(name, family)
        if param.requires_grad:
            counts[part][0] += param.numel()
        wrapper_copy = ".modules_to_save." in name or ".lora_" in name
        if not wrapper_copy:
            counts[part][1] += param.numel()
    return {part: (t, n) for part, (t, n) in counts.items()}


def param_groups(
    model: nn.Module, family: Family, learning_rates: dict[str, float], weight_decay: float, decay: set[str]
) -> list[dict]:
    """Optimizer groups: one learning rate per part (seed 002's lr, vit_lr, aligner lr), weight decay only
    on the names in `decay` (the Trainer's choice: no biases, no norms). Empty groups are left out."""
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((part_of(name, family), name in decay), []).append(param)
    return [
        {
            "name": f"{part}/{'decay' if decays else 'no_decay'}",
            "params": params,
            "lr": learning_rates[part],
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (part, decays), params in sorted(groups.items())
    ]


def trainable_line(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    return f"trainable params: {trainable:,} / {total:,} ({100 * trainable / total:.2f}%)"
