"""`pigg params CONFIG --approaches`: memory per GPU of each fine-tuning approach, computed from the model's
config on the meta device (no weights): seed 003's VRAM columns, for any model pigg knows.

What each byte is, in bf16 training as pigg runs it (activations are excluded: they depend on batch,
length and checkpointing, and `pigg plan` measures them):
- weights: 2 bytes per parameter; QLoRA's quantized LLM linears 4.127 bits (NF4 with double quantization:
  4 bits + an 8-bit absmax per 64 weights + a float32 per 256 absmaxes), everything else as loaded;
- LoRA adapters are float32 (peft's default): 4 bytes of weights, 4 of gradients, 8 of AdamW moments;
- fully trained weights under the HF Trainer keep their bf16 gradients and torch AdamW's two bf16 moments;
- DeepSpeed keeps a float32 master copy and float32 moments: 12 bytes per trained parameter, partitioned
  over the ranks (ZeRO-2 also partitions gradients, ZeRO-3 the weights too);
- FSDP2 shards weights, gradients and moments, and holds the layer being computed (and the next,
  prefetched) whole: two of the largest shard units on top.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from torch import nn

from pigg.config import ExperimentConfig

BF16 = 2
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
GIB = 2**30


@dataclass
class ApproachMemory:
    approach: str
    gpus: int
    weights: float  # bytes per GPU
    gradients: float
    optimizer: float
    note: str = ""

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


def _quantized_params(model: nn.Module, family) -> int:
    """Parameters bitsandbytes stores in 4 bits: the weights of the linear layers inside the LLM's decoder
    layers (pigg keeps the vision side and lm_head unquantized)."""
    layers = model.get_submodule(family.llm_layers)
    return sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear))


def approach_memory(cfg: ExperimentConfig, gpu_counts: tuple[int, ...] = (2, 4, 8)) -> dict:
    """Per approach and GPU count: weights, gradients and optimizer states per GPU, in bytes."""
    from pigg.models.loading import resolve_family
    from pigg.models.params import meta_model
    from pigg.models.placement import place_layers, placement_units
    from pigg.models.trainable import apply_method, count_parameters

    family = resolve_family(cfg.model.name, cfg.model.family)

    def planned(method: str) -> nn.Module:
        return apply_method(
            meta_model(cfg.model.name), family, method, cfg.lora, cfg.vision.method, cfg.aligner,
            vision_blocks=cfg.vision.blocks, llm_layers=cfg.llm.layers,
        )  # fmt: skip

    lora_model = planned("lora")
    adapter, _ = count_parameters(lora_model)
    full_model = planned("full")
    trained, total = count_parameters(full_model)
    quantized = _quantized_params(full_model, family)
    units = placement_units(full_model, family, BF16)
    largest_layer = max(u.weight_bytes for u in units if u.name.startswith(family.llm_layers))

    rows = [
        ApproachMemory("LoRA", 1, total * BF16 + adapter * 4, adapter * 4, adapter * 8),
        ApproachMemory(
            "QLoRA",
            1,
            quantized * NF4_BITS / 8 + (total - quantized) * BF16 + adapter * 4,
            adapter * 4,
            adapter * 8,
            "LLM linears in NF4",
        ),  # fmt: skip
    ]
    rows += [
        ApproachMemory("LoRA + DDP", k, rows[0].weights, rows[0].gradients, rows[0].optimizer, "a copy each")
        for k in gpu_counts
    ]
    full = ApproachMemory("full", 1, total * BF16, trained * BF16, trained * 2 * BF16)
    rows.append(full)
    for k in (n for n in gpu_counts if n <= 4):
        placement = place_layers(units, list(range(k)))
        busiest = max(placement.bytes_per_device, key=placement.bytes_per_device.get)
        stretch = [u for u in units if placement.device_map[u.name] == busiest]
        weights = sum(u.weight_bytes for u in stretch)
        trained_here = sum(u.trained_bytes for u in stretch)
        rows.append(
            ApproachMemory("full + MP", k, weights, trained_here, 2 * trained_here, f"busiest: GPU {busiest}")
        )
    for k in gpu_counts:
        rows.append(
            ApproachMemory(
                "full + FSDP",
                k,
                total * BF16 / k + 2 * largest_layer,
                trained * BF16 / k,
                trained * 2 * BF16 / k,
                "+2 gathered layers",
            )  # fmt: skip
        )
    for k in gpu_counts:
        rows.append(
            ApproachMemory(
                "full + ZeRO-2", k, total * BF16, trained * BF16 / k, trained * 12 / k, "fp32 master"
            )
        )
    for k in gpu_counts:
        rows.append(
            ApproachMemory(
                "full + ZeRO-3", k, total * BF16 / k, trained * BF16 / k, trained * 12 / k, "fp32 master"
            )
        )
    return {
        "model": cfg.model.name,
        "parameters": total,
        "trained_full": trained,
        "trained_lora": adapter,
        "quantized": quantized,
        "rows": [asdict(r) | {"total": r.total} for r in rows],
    }


def markdown(report: dict) -> str:
    lines = [
        f"{report['model']}: {report['parameters']:,} parameters; full trains {report['trained_full']:,}, "
        f"LoRA {report['trained_lora']:,}. GiB per GPU, bf16, activations excluded.",
        "",
        "| approach | GPUs | weights | gradients | optimizer | total | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['approach']} | {r['gpus']} | {r['weights'] / GIB:.2f} | {r['gradients'] / GIB:.2f} | "
            f"{r['optimizer'] / GIB:.2f} | **{r['total'] / GIB:.2f}** | {r['note']} |"
        )
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)
