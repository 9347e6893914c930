"""Where a model's parts live when it does not fit one device: layer placement for model parallel (seed
003's "full fine-tuning with MP"), and the units FSDP shards.

Model parallel keeps the forward order: vision tower, embeddings, decoder layers, final norm, lm_head, cut
into one contiguous stretch per GPU. The cuts balance what *training* keeps per GPU, not the weights alone:
a trained part holds its weights, gradients and AdamW's two moments (4x its weights in one dtype), a
frozen part (the vision tower in seed 000's recipe) only its weights. accelerate's "balanced" map balances
weights and leaves room on GPU 0, which puts too much training state on the last GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pigg.errors import ConfigError
from pigg.models.families import Family

# bytes kept per weight byte of a trained parameter: weights, gradients, AdamW's exp_avg and exp_avg_sq
# (the Trainer's torch AdamW keeps its moments in the parameters' dtype)
TRAINED_FACTOR = 4


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Unit:
    """A stretch of the model that stays on one device (a module path), with its training bytes."""

    name: str
    weight_bytes: int
    trained_bytes: int  # of weight_bytes, the trained parameters' share
    tied_to: str | None = None  # a unit whose weights this one shares (lm_head tied to the embeddings)

    @property
    def bytes(self) -> int:
        return self.weight_bytes + (TRAINED_FACTOR - 1) * self.trained_bytes


def placement_units(model: nn.Module, family: Family, element_size: int | None = None) -> list[Unit]:
    """The model's units in forward order; what trains is read from `requires_grad` (apply the plan
    first). `element_size` overrides the parameters' own (meta models report float32)."""
    layers = len(model.get_submodule(family.llm_layers))
    llm_root = family.llm_layers.rsplit(".", 1)[0]
    stacks = (f"{family.llm_layers}.{i}" for i in range(layers))
    fixed = [p for p in (family.vision_tower, family.embeddings) if p] + list(stacks)

    def unit_of(name: str) -> str:
        for prefix in fixed:
            if _under(name, prefix):
                return prefix
        if _under(name, llm_root):  # the final norm, the rotary embedding's buffers
            return ".".join(name.split(".")[: llm_root.count(".") + 2])
        return name.split(".")[0]  # lm_head, and anything else at the top

    sizes: dict[str, list[int]] = {}
    owner: dict[int, str] = {}  # tensor id -> the unit that holds it
    tied: dict[str, str] = {}
    tensors = [(n, p, p.requires_grad) for n, p in model.named_parameters(remove_duplicate=False)]
    tensors += [(n, b, False) for n, b in model.named_buffers()]
    for name, tensor, trained in tensors:
        unit = unit_of(name)
        entry = sizes.setdefault(unit, [0, 0])
        if id(tensor) in owner:  # a tied weight lives with the unit that holds it first
            if owner[id(tensor)] != unit:
                tied[unit] = owner[id(tensor)]
            continue
        owner[id(tensor)] = unit
        size = tensor.numel() * (element_size or tensor.element_size())
        entry[0] += size
        entry[1] += size if trained else 0
    lm_tail = [n for n in sizes if n not in fixed and _under(n, llm_root)]
    order = [*fixed, *lm_tail, *(n for n in sizes if n not in fixed and n not in lm_tail)]
    return [Unit(n, *sizes[n], tied.get(n)) for n in order if n in sizes]


def split_contiguous(costs: list[int], parts: int) -> list[int]:
    """Cut points (start index of each part after the first) splitting `costs` into `parts` contiguous,
    non-empty stretches with the smallest possible largest stretch (exact dynamic programme)."""
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot split {n} units over {parts} devices")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][i]: the smallest largest stretch splitting the first i units into k stretches
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                worst = max(best[k - 1][j], prefix[i] - prefix[j])
                if worst < best[k][i]:
                    best[k][i], cut[k][i] = worst, j
    points, i = [], n
    for k in range(parts, 1, -1):
        i = cut[k][i]
        points.append(i)
    return sorted(points)


@dataclass
class Placement:
    device_map: dict[str, int]  # module path -> GPU index, for from_pretrained(device_map=...)
    bytes_per_device: dict[int, int]
    largest_unit: int  # bytes of the largest unit: how far from perfectly even a contiguous split can be


def place_layers(units: list[Unit], devices: list[int], max_bytes: dict[int, int] | None = None) -> Placement:
    """One contiguous stretch of units per device, balanced by training bytes; refuses, before any weight
    loads, when a device's stretch is over its cap."""
    if not devices:
        raise ConfigError("model parallel needs at least one GPU")
    own = [u for u in units if u.tied_to is None]  # tied units follow their weights' owner
    cuts = [0, *split_contiguous([u.bytes for u in own], len(devices)), len(own)]
    device_map: dict[str, int] = {}
    load: dict[int, int] = {}
    for device, (start, end) in zip(devices, zip(cuts, cuts[1:], strict=False), strict=True):
        for unit in own[start:end]:
            device_map[unit.name] = device
        load[device] = sum(u.bytes for u in own[start:end])
    for unit in units:
        if unit.tied_to is not None:
            device_map[unit.name] = device_map[unit.tied_to]
            load[device_map[unit.name]] += unit.bytes
    for device, used in load.items():
        cap = (max_bytes or {}).get(device)
        if cap is not None and used > cap:
            raise ConfigError(
                f"model parallel over {len(devices)} GPUs needs {used / 2**30:.1f} GiB on GPU {device} for "
                f"weights, gradients and optimizer states (activations come on top), over its "
                f"{cap / 2**30:.1f} GiB; use more GPUs, LoRA, or train.parallel=fsdp"
            )
    return Placement(device_map, load, max(u.bytes for u in units))


def parse_memory(text: str) -> int:
    """Bytes from "70GiB", "70GB", "512MiB" or a plain number of bytes."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"train.max_memory_per_gpu={text!r}: write e.g. 70GiB or 80GB")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
    scale |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    return int(number * scale[unit])


def shard_unit_classes(model: nn.Module, family: Family) -> list[str]:
    """The module classes FSDP wraps one by one: the LLM decoder layer and the vision block, as this
    model names them (read off the model, not hard-coded)."""
    names = []
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA + FSDP
    for stack in (s for s in (family.llm_layers, family.vision_blocks) if s):
        layer = type(model.get_submodule(f"{stack}.0")).__name__
        if layer not in names:
            names.append(layer)
    return names
