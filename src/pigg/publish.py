"""Shipping a trained agent: merge its adapters into full weights, and push a folder to the Hugging Face Hub
with a model card made from the run's config and results."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from pigg.errors import ConfigError, PiggError

MERGE_INFO = "pigg_merge.json"
# What never goes to the hub: resumable training state and half-written saves.
PUSH_IGNORE = ["checkpoint-*", "checkpoint-*/**", ".partial/**", "*.log", "__pycache__/**"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def merge_run(
    spec: str, out: str | Path, user: int | None = None, dtype: str = "auto", max_shard_size: str = "5GB"
) -> Path:
    """Merge every adapter of `spec` (a LoRA run, an adapter folder, a user's adapter chain) into its base
    and save one model folder loadable by `from_pretrained`: sharded safetensors, processor, chat template,
    and the run's config and summary."""
    import torch

    from pigg.infer import base_of, load_weights, resolve_model
    from pigg.models.loading import load_processor, resolve_family

    ref = resolve_model(spec, user=user)
    if not ref.adapters:
        raise ConfigError(f"{spec} holds full weights, no adapter: there is nothing to merge; use it as is")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; choose a new folder")
    config = json.loads((Path(ref.base) / "config.json").read_text()) if Path(ref.base).is_dir() else {}
    if dtype == "auto":  # the base's own dtype: a bf16 base gives a bf16 merged model
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    print(f"merging {len(ref.adapters)} adapter(s) into {ref.base} in {dtype}")
    summary = ref.run_dir / "pigg_run.json" if ref.run_dir is not None else None
    quantized = json.loads(summary.read_text()).get("quantization") if summary and summary.exists() else None
    if quantized:
        # An adapter cannot be merged into 4-bit weights without rounding it away: it goes into the base's
        # own full-precision weights, as QLoRA's authors merge, which the adapter never saw in training.
        print(
            f"note: this adapter was trained on the {quantized}-quantized base (QLoRA); it is merged into the "
            f"base's unquantized {dtype} weights, so answers can differ slightly from the 4-bit model's"
        )
    model = load_weights(ref, getattr(torch, dtype))
    model.save_pretrained(str(out), max_shard_size=max_shard_size)
    load_processor(ref.processor_from, resolve_family(ref.base)).save_pretrained(str(out))
    run = ref.run_dir
    for name in ("pigg_config.yaml", "pigg_run.json"):
        if run is not None and (run / name).exists():
            shutil.copy2(run / name, out / name)
    info = {"base_model": base_of(ref).base, "adapters": list(ref.adapters), "dtype": dtype}
    if quantized:
        info["adapter_trained_on"] = quantized
    (out / MERGE_INFO).write_text(json.dumps(info, indent=2))
    return out


# ---------------------------------------------------------------- push


def model_card(folder: Path) -> str:
    """A model card from what the folder holds: its base, the training config, the run's numbers and the
    evaluation, when present."""
    folder = Path(folder)
    run = _read_json(folder / "pigg_run.json")
    merge = _read_json(folder / MERGE_INFO)
    adapter = _read_json(folder / "adapter_config.json")
    base = merge.get("base_model") or run.get("base_model") or adapter.get("base_model_name_or_path", "")
    is_adapter = bool(adapter) and not merge
    config = folder / "pigg_config.yaml"
    settings = (yaml.safe_load(config.read_text()) or {}) if config.exists() else {}
    classify = settings.get("task") == "classify"
    front = {
        "library_name": "peft" if is_adapter else "transformers",
        "pipeline_tag": "text-generation" if classify else "image-text-to-text",
        "tags": ["pigg", *(["text-classification"] if classify else ["gui-agent", "gui-grounding"])]
        + (["lora"] if adapter or merge else []),
    }
    if base and not Path(base).exists():  # a hub id, not a local folder
        front["base_model"] = base
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {folder.name}", ""]
    if classify:
        labels = ", ".join(settings.get("classify", {}).get("labels", []))
        lines.append(
            "A text classifier trained with [pigg](https://github.com/pigg-project/pigg): given a text, it "
            f"answers with its class ({labels})."
        )
    else:
        lines.append(
            "A GUI agent trained with [pigg](https://github.com/pigg-project/pigg): given a screenshot and an "
            "instruction, it answers where to click."
        )
    if base:
        lines += ["", f"Base model: `{base}`" + (" (LoRA adapter)" if is_adapter else "")]
    if merge:
        lines += ["", f"Merged from {len(merge['adapters'])} adapter(s), saved in {merge['dtype']}."]
    if run:
        lines += [
            "",
            "## Training",
            "",
            f"- method: {run.get('method')}, steps: {run.get('steps')}, training samples: "
            f"{run.get('train_samples')}",
            f"- loss: {run.get('first_loss')} → {run.get('last_loss')}",
            f"- wall time: {run.get('train_seconds')} s",
        ]
    if config.exists():
        lines += ["", "## Config", "", "```yaml", config.read_text().strip(), "```"]
    evaluation = _read_json(folder / "eval" / "eval.json")
    scored = _read_json(folder / "eval" / "classification.json")
    if scored:
        summary = {
            name: {k: r[k] for k in ("accuracy", "macro_f1", "parse_failures")}
            for name, r in scored["results"].items()
        }
        lines += ["", "## Evaluation", "", "```json", json.dumps(summary, indent=1), "```"]
    if evaluation:
        lines += ["", "## Evaluation", "", "```json", json.dumps(evaluation.get("models", evaluation))[:4000]]
        lines.append("```")
    usage = "peft.PeftModel.from_pretrained(base, REPO)" if is_adapter else "from_pretrained(REPO)"
    lines += [
        "",
        "## Use",
        "",
        f"Load with `{usage}`, or "
        + (
            "`pigg eval --compare base,RUN`."
            if classify
            else "`pigg predict --model REPO --image S.png --prompt ...`."
        ),
    ]
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _files(folder: Path) -> list[Path]:
    from huggingface_hub.utils import filter_repo_objects

    everything = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    kept = filter_repo_objects(everything, ignore_patterns=PUSH_IGNORE)
    return [Path(p) for p in kept if p != "README.md"]


def push_folder(folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False) -> str:
    """Upload a model, run or adapter folder with a generated model card (README.md). `dry_run` lists
    what would be uploaded and needs no token."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    if not ((folder / "config.json").exists() or (folder / "adapter_config.json").exists()):
        raise ConfigError(f"{folder} holds no model (no config.json or adapter_config.json)")
    if not REPO_ID.match(repo_id):
        raise ConfigError(f"--repo-id {repo_id!r}: write it as OWNER/NAME")
    files = _files(folder)
    card = model_card(folder)
    total = sum((folder / f).stat().st_size for f in files) + len(card.encode())
    listing = "\n".join(f"  {f} ({(folder / f).stat().st_size:,} bytes)" for f in files)
    plan = (
        f"{'would upload' if dry_run else 'uploading'} {len(files) + 1} files ({total:,} bytes) to "
        f"{'private' if private else 'public'} repo {repo_id}:\n  README.md (model card, generated)\n{listing}"
    )
    if dry_run:
        return plan + "\n\n--- README.md ---\n" + card
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise PiggError(
            "no Hugging Face token found: set HF_TOKEN or run `hf auth login`; nothing was uploaded "
            "(`--dry-run` shows what would be)"
        )
    print(plan)
    (folder / "README.md").write_text(card)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            ignore_patterns=PUSH_IGNORE,
            commit_message="Upload with pigg push",
        )
    except Exception as exc:  # network, permissions, quota: say which repo and why
        raise PiggError(f"push to {repo_id} failed: {exc}") from None
    return f"pushed to {info.commit_url if hasattr(info, 'commit_url') else repo_id}"
