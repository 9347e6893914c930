"""Inference that knows no task: a model reference resolved, loaded once, prompted and generated from.

How a task reads the answers (clicks: `pigg.grounding.clicks`; labels: `pigg.classification`; free text:
`pigg.freetext`) is the task's business. A model reference is what a user types after `--model`: a hub id, a model folder, a pigg run folder
(full weights, or a LoRA adapter over its base), or an adapter folder; `--adapter` adds an adapter and
`--user ID` adds that user's personal adapter from RUN/users/ID. For inference every adapter is merged
into the weights in order, so the result is one plain model; `pigg personalize` swaps adapters instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from PIL import Image

from pigg.data.render import Renderer, render_text
from pigg.errors import ConfigError
from pigg.models.loading import (
    ADAPTER_CONFIG,
    adapter_chain,
    load_model,
    load_processor,
    looks_local,
    merge_adapters,
    resolve_family,
)

USERS_DIR = "users"


@dataclass(frozen=True)
class ModelRef:
    """What to load: base weights, then adapters in order."""

    label: str
    base: str
    adapters: tuple[str, ...] = ()
    processor_from: str = ""  # a folder or hub id holding the processor; the base when empty

    @property
    def run_dir(self) -> Path | None:
        """The pigg run this reference starts from, if any (personal adapters live under it)."""
        for candidate in (*self.adapters[:1], self.base):
            if (Path(candidate) / "pigg_run.json").exists():
                return Path(candidate)
        return None


def _has_processor(folder: Path, text_only: bool = False) -> bool:
    """Whether `folder` holds the whole processor: a tokenizer, and an image processor unless the model is
    text-only."""
    return (folder / "tokenizer_config.json").exists() and (
        text_only
        or (folder / "preprocessor_config.json").exists()
        or (folder / "processor_config.json").exists()
    )


def _text_only(base: str) -> bool:
    """Whether `base` is a text family's model; False when that cannot be told (a hub id not cached here,
    a folder without config.json: the model's loading then says what is missing)."""
    try:
        return not resolve_family(base).has_vision
    except ConfigError:
        return False


def user_adapter_dir(run_dir: Path, user: int) -> Path:
    return Path(run_dir) / USERS_DIR / str(user)


def resolve_model(spec: str, adapter: str | None = None, user: int | None = None) -> ModelRef:
    """Turn `--model SPEC [--adapter PATH] [--user ID]` into a ModelRef; errors name what is missing."""
    folder = Path(spec)
    if looks_local(spec) and not folder.is_dir():
        raise ConfigError(f"model folder {spec} does not exist")
    base, adapters = adapter_chain(spec)
    if adapter is not None:
        if not (Path(adapter) / ADAPTER_CONFIG).exists():
            raise ConfigError(f"--adapter {adapter}: no {ADAPTER_CONFIG} there")
        adapters.append(adapter)
    if user is not None:
        user_dir = user_adapter_dir(folder, user)
        if not (user_dir / ADAPTER_CONFIG).exists():
            available = sorted(
                p.name for p in (folder / USERS_DIR).glob("*") if (p / ADAPTER_CONFIG).exists()
            )
            raise ConfigError(
                f"--user {user}: no personal adapter at {user_dir}; "
                + (f"users with one: {', '.join(available)}" if available else "run `pigg personalize` first")
            )
        adapters.append(str(user_dir))
    # The processor comes from the outermost folder that holds one (runs save theirs), else the base.
    text_only = _text_only(base)
    processor_from = next(
        (a for a in [spec, *reversed(adapters)] if _has_processor(Path(a), text_only)), base
    )
    label = folder.name if folder.exists() else spec
    if user is not None:
        label += f"+user{user}"
    return ModelRef(label=label, base=base, adapters=tuple(adapters), processor_from=processor_from)


def base_of(ref: ModelRef) -> ModelRef:
    """The zero-shot model under a reference: its base weights with no adapter, labelled "base"."""
    run = ref.run_dir
    base = ref.base
    if run is not None and Path(base) == run:  # a full fine-tuning run: its base is recorded in the run
        base = json.loads((run / "pigg_run.json").read_text())["base_model"]
    return ModelRef(label="base", base=base, processor_from=ref.processor_from)


def default_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def load_weights(ref: ModelRef, dtype: torch.dtype | None = None):
    """The model of `ref`, every adapter merged into the weights in order."""
    model = load_model(ref.base, dtype or default_dtype(), "auto" if torch.cuda.is_available() else None)
    return merge_adapters(model, ref.adapters).eval()


def system_turns_of(ref: ModelRef) -> str:
    """The run's `data.system_turns`, so prompts are rendered as in its training; "auto" otherwise."""
    run = ref.run_dir
    if run is None or not (run / "pigg_config.yaml").exists():
        return "auto"
    return yaml.safe_load((run / "pigg_config.yaml").read_text()).get("data", {}).get("system_turns", "auto")


@dataclass
class Agent:
    """A loaded model with its processor: renders prompts exactly as training did and generates."""

    model: object
    processor: object
    renderer: Renderer
    max_new_tokens: int = 32
    label: str = "model"

    @classmethod
    def load(cls, ref: ModelRef, dtype=None, max_new_tokens: int = 32, image_cache=None) -> Agent:
        """`image_cache`: a `data.image_cache` setting ("auto", a folder, None for none): screenshots
        already decoded and resized for this processor (by training, or by an earlier eval) are read
        from it, and the others are added."""
        from pigg.data.image_cache import image_cache_for

        family = resolve_family(ref.base)
        processor = load_processor(ref.processor_from or ref.base, family)
        cache = image_cache_for(image_cache, processor.image_processor, family)
        renderer = Renderer(processor, family, system_turns_of(ref), image_cache=cache)
        return cls(load_weights(ref, dtype), processor, renderer, max_new_tokens, ref.label)

    @property
    def family(self):
        return self.renderer.family

    def prompt_inputs(self, prompts: list[list[dict]], images: list[list[Image.Image]]):
        """Prompts and their screenshots as model inputs on the model's device."""
        texts = [render_text(self.processor, p, add_generation_prompt=True) for p in prompts]
        flat = [image for group in images for image in group]
        # Qwen's processors take the batch's images in one list, Idefics3's one list per prompt
        given = (images if self.family.image_sizing == "tiles" else flat) if flat else None
        # left padding: generation continues every row from its last real token
        inputs = self.processor(
            text=texts, images=given, padding=True, padding_side="left", return_tensors="pt"
        )
        return inputs.to(self.model.device)

    def generate_ids(self, inputs, **options) -> torch.Tensor:
        """The new tokens of batched generation (rows that ended early are padded): greedy unless `options`
        say otherwise; they go to `generate` as they are (sampling, a streamer, peft's adapter_names)."""
        settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False} | options
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, **settings, use_cache=True, pad_token_id=self.renderer.markers.pad
            )
        return out[:, inputs["input_ids"].shape[1] :]

    def generate_text(self, inputs) -> list[str]:
        return self.processor.tokenizer.batch_decode(self.generate_ids(inputs), skip_special_tokens=True)
