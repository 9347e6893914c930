"""`pigg params`: what trains, how, and how many parameters per part, without loading a single weight.

The model is built from its config on the `meta` device (shapes only), so the real Qwen3-VL-8B answers in
seconds on a laptop; the same per-part plan as `pigg train` is applied to it.
"""

from __future__ import annotations

import json

from pigg.config import ExperimentConfig
from pigg.errors import ConfigError


def meta_model(name_or_path: str):
    """The architecture of `name_or_path` (a folder or hub id with a config.json), on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from pigg.models.families import family_for_model_type

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as exc:
        raise ConfigError(f"cannot read a model config from {name_or_path!r}: {exc}") from None
    text_only = not family_for_model_type(config.model_type).has_vision
    with torch.device("meta"):
        return (AutoModelForCausalLM if text_only else AutoModelForImageTextToText).from_config(config)


def parameter_report(cfg: ExperimentConfig) -> dict:
    from pigg.models.loading import resolve_family
    from pigg.models.trainable import apply_plan, count_by_part, modules_to_save, part_of, plan_parts

    family = resolve_family(cfg.model.name, cfg.model.family)
    model = meta_model(cfg.model.name)
    plans = plan_parts(
        model, family, cfg.llm_method, cfg.vision.method, cfg.aligner, cfg.vision.blocks, cfg.llm.layers
    )
    saved = modules_to_save(model, plans)
    model = apply_plan(model, family, plans, cfg.lora)
    counts = count_by_part(model, family)
    lora_modules = sorted({n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n})
    parts = []
    for plan in plans:
        trainable, total = counts[plan.part]
        parts.append(
            {
                "part": plan.part,
                "method": plan.method,
                "selection": plan.selection,
                "indices": plan.indices,
                "of": plan.count or None,
                "lora_modules": sum(1 for n in lora_modules if part_of(n, family) == plan.part),
                "trainable": trainable,
                "total": total,
            }
        )
    trainable = sum(p["trainable"] for p in parts)
    total = sum(p["total"] for p in parts)
    return {
        "model": cfg.model.name,
        "family": family.name,
        "lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha} if lora_modules else None,
        "modules_to_save": saved if lora_modules else [],
        "parts": parts,
        "trainable": trainable,
        "total": total,
    }


def markdown(report: dict) -> str:
    lines = [
        f"{report['model']} ({report['family']})",
        "",
        "| part | method | blocks/layers | LoRA modules | trainable | total | % |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for p in report["parts"]:
        where = p["selection"] + (f" of {p['of']}" if p["of"] and p["method"] != "frozen" else "")
        share = 100 * p["trainable"] / p["total"] if p["total"] else 0.0
        lines.append(
            f"| {p['part']} | {p['method']} | {where} | {p['lora_modules']} | {p['trainable']:,} | "
            f"{p['total']:,} | {share:.2f} |"
        )
    share = 100 * report["trainable"] / report["total"]
    lines.append(f"| **all** | | | | **{report['trainable']:,}** | **{report['total']:,}** | {share:.2f} |")
    if report["lora"]:
        lines.append(f"\nLoRA r={report['lora']['r']}, alpha={report['lora']['alpha']}")
    if report["modules_to_save"]:
        lines.append(
            "modules_to_save (trained fully, saved with the adapter): " + ", ".join(report["modules_to_save"])
        )
    return "\n".join(lines)


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2)
