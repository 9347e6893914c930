"""Loading processors and models by hub id or local folder: the same path for the tiny and the 8B model."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoConfig

from pigg.errors import ConfigError
from pigg.models.families import Family, family_for_model_type, get_family

PROCESSOR_CLASSES = {
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "idefics3": "Idefics3Processor",
    "idefics2": "Idefics2Processor",
}


@functools.cache
def _image_only(base: type) -> type:
    """A processor of `base` without its video processor.

    The stock Qwen-VL processors build a video processor that needs torchvision, which has no CPU wheel
    here. GUI grounding needs images only; saved folders still name the stock class so that a machine
    with torchvision loads them with `AutoProcessor`.
    """

    class ImageOnlyProcessor(base):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(
                image_processor=image_processor,
                tokenizer=tokenizer,
                video_processor=None,
                chat_template=chat_template,
                **kwargs,
            )

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = base.__name__
            return out

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"{base.__name__}ImageOnly"
    return ImageOnlyProcessor


def __getattr__(name: str) -> type:
    """The image-only processor classes by name, so that pickle finds them in a fresh process (dataloader
    workers under the spawn and forkserver start methods, `pigg bench`'s runs)."""
    for proc in PROCESSOR_CLASSES.values():
        if name == f"{proc}ImageOnly":
            return _image_only(getattr(transformers, proc))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TextProcessor:
    """A text model's tokenizer in the shape of a processor (`.tokenizer`, `.image_processor` None, calls
    and chat templates), so rendering, validation, evaluation and saving take one path for both kinds.

    Text chat templates (Qwen2.5's, Qwen3's) concatenate `message.content` as a string: contents written
    as lists of text items (pigg's normalised form) are joined into one string here; an image item is
    refused, a text model has nothing to see it with.
    """

    image_processor = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> TextProcessor:
        return cls(transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs))

    @property
    def chat_template(self):
        return self.tokenizer.chat_template

    def save_pretrained(self, out, **kwargs):
        return self.tokenizer.save_pretrained(out, **kwargs)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs):
        return self.tokenizer.apply_chat_template([flatten_text(m) for m in messages], **kwargs)

    def __call__(self, text=None, images=None, **kwargs):
        if images:
            raise ValueError("a text-only model takes no images")
        return self.tokenizer(text, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def flatten_text(message: dict[str, Any]) -> dict[str, Any]:
    """A message whose content is a list of text items, as one with that text as a string."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = []
    for item in content:
        if isinstance(item, dict) and (item.get("type") == "image" or "image" in item):
            raise ValueError(f"a {message.get('role')} turn holds an image, and a text-only model takes none")
        parts.append(item.get("text", "") if isinstance(item, dict) else str(item))
    return {**message, "content": "".join(parts)}


def looks_local(name_or_path: str) -> bool:
    """A path rather than a hub id ("owner/name"): absolute, relative with ./, or more than one slash."""
    return Path(name_or_path).is_absolute() or name_or_path.startswith(".") or name_or_path.count("/") > 1


def read_model_type(name_or_path: str) -> str:
    if looks_local(name_or_path) and not Path(name_or_path).is_dir():
        raise ConfigError(f"model folder {name_or_path} does not exist")
    try:
        return AutoConfig.from_pretrained(name_or_path).model_type
    except OSError as exc:
        raise ConfigError(f"cannot read a model config from {name_or_path!r}: {exc}") from None


def resolve_family(name_or_path: str, family: str = "auto") -> Family:
    """The family named in the config, or the one the model's config.json declares."""
    if family != "auto":
        return get_family(family)
    local = Path(name_or_path)
    if local.is_dir() and not (local / "config.json").exists():
        # A processor-only folder (tokenizer + templates, no weights) still says what it is.
        for candidate in ("processor_config.json", "preprocessor_config.json"):
            if (local / candidate).exists():
                cls = json.loads((local / candidate).read_text()).get("processor_class", "")
                for fam, proc in PROCESSOR_CLASSES.items():
                    if cls.startswith(proc):
                        return get_family(fam)
        raise ConfigError(f"{local} has no config.json; set model.family explicitly")
    return family_for_model_type(read_model_type(name_or_path))


def load_processor(
    name_or_path: str,
    family: Family,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """The model's processor (tokenizer + image processor + chat template); a TextProcessor for a text
    family.

    Uses the stock processor where torchvision is installed and the image-only one otherwise.
    """
    if not family.has_vision:
        try:
            processor = TextProcessor.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a tokenizer from {name_or_path!r}: {exc}") from None
        if processor.chat_template is None:
            raise ConfigError(
                f"{name_or_path}: no chat template found (chat_template.jinja or tokenizer_config)"
            )
        return processor
    base = getattr(transformers, PROCESSOR_CLASSES[family.name])
    try:
        processor = base.from_pretrained(name_or_path)
    except (ImportError, OSError, ValueError):
        # No torchvision, or a folder without a video processor config (pigg's own folders, or a
        # processor-only folder with no config.json from which to guess one).
        try:
            processor = _image_only(base).from_pretrained(name_or_path)
        except OSError as exc:
            raise ConfigError(f"cannot load a processor from {name_or_path!r}: {exc}") from None
    if processor.chat_template is None:
        raise ConfigError(
            f"{name_or_path}: no chat template found (chat_template.jinja/json or tokenizer_config)"
        )
    if family.image_sizing != "qwen":
        if min_pixels is not None or max_pixels is not None:
            raise ConfigError(
                f"model.min_pixels / max_pixels set Qwen's pixel budget; {family.name} splits images into "
                "tiles (its processor's size and max_image_size say how)"
            )
        return processor
    size = dict(processor.image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    if min_pixels is not None or max_pixels is not None:
        processor.image_processor.size = {
            k: v for k, v in size.items() if k in ("shortest_edge", "longest_edge")
        }
    return processor


def load_model(
    name_or_path: str,
    dtype,
    device_map: str | dict | None = None,
    attn_implementation=None,
    quantization_config=None,
):
    """The whole model, weights included (quantized while loading when asked): the vision-language model,
    or a text family's causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    family = resolve_family(name_or_path)
    auto = AutoModelForImageTextToText if family.has_vision else AutoModelForCausalLM
    try:
        return auto.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot load model weights from {name_or_path!r}: {exc}") from None


# ---------------------------------------------------------------- adapters over a base

ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(folder: Path) -> str:
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{folder / ADAPTER_CONFIG} does not name its base model")
    return base


def adapter_chain(spec: str) -> tuple[str, list[str]]:
    """(base weights, adapters from the innermost out) of a folder that may be an adapter over an adapter
    (a user's adapter over a LoRA global run over the base model)."""
    adapters: list[str] = []
    current = spec
    while (Path(current) / ADAPTER_CONFIG).exists():
        if current in adapters or len(adapters) > 8:
            raise ConfigError(f"{spec}: adapters name each other as base models in a loop")
        adapters.insert(0, current)
        current = adapter_base(Path(current))
    return current, adapters


def merge_adapters(model, adapters):
    """`model` with each LoRA adapter folder merged into its weights, in order."""
    from peft import PeftModel

    for path in adapters:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    return model
