"""Random-weight models saved as ordinary Hugging Face folders.

- Tiny models (`build_tiny`): a shrunken copy of a real architecture, with a small tokenizer and a chat
  template pigg builds itself; tests and the demo train them on CPU.
- Full-size stand-ins (`build_random`): a real config (the 8B's, from a folder without weights) with random
  weights, for measuring speed and memory on a GPU without downloading the weights.

They load through exactly the same `from_pretrained` path as Qwen/Qwen3-VL-8B-Instruct, so tests and the
demo exercise the real code. The tokenizer is small (about 1k tokens) because with the real 152k
vocabulary the embeddings and output layer would be ~98% of the model and dominate step time on CPU; a
real tokenizer folder gives the real vocabulary instead (`--tokenizer`), for measuring exactly that.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Written for pigg in the Qwen chat format (im_start/im_end turns, vision markers around each image).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is string -%}{{- message.content -}}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'image' or 'image' in item -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}{{- item.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Words the tokenizer learns merges for: GUI vocabulary, instructions, answer syntax. Anything else
# still encodes (byte-level alphabet), only in more tokens.
_CORPUS_WORDS = """
click tap press select open close the a an on in to of my your this that button icon menu field label link tab
window dialog settings file edit view help save cancel ok yes no login logout sign search send delete submit
back next home profile mail music photos calendar notes chat maps camera store news weather clock contacts
usernames password email name text box top bottom left right middle center corner upper lower favourite usual
thing app bar toolbar sidebar panel item list checkbox toggle slider dropdown please where is find go
red green blue yellow orange purple white black gray grey pink dark light big small
system user assistant you are a helpful gui agent answer with point coordinates
"""


def build_tokenizer(vocab_size: int = 1024, extra_words: list[str] | None = None):
    """A byte-level BPE tokenizer with Qwen's special tokens and single-digit numbers (as Qwen does);
    `extra_words` join the corpus it learns merges from (the text models add the news vocabulary)."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    words = _CORPUS_WORDS.split() + list(extra_words or [])
    corpus = [" ".join(words[i : i + 8]) for i in range(0, len(words), 3)] * 4
    corpus += [f"({x}, {y})" for x, y in [(1, 2), (34, 567), (890, 12)]] + [w.capitalize() for w in words]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def _shrunk_config(tokenizer, text: dict, vision: dict, vocab_size: int | None = None) -> dict:
    """Config kwargs both tiny families share: hidden 128, 4 layers, 4 heads (head_dim 32), a 2-block
    vision tower of width 64, and the token ids looked up in the tokenizer; `text`/`vision` add the
    family's own keys. `vocab_size` defaults to the tokenizer's length."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "text_config": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": vocab_size or len(tokenizer),
            "max_position_embeddings": 4096,
            "rope_theta": 10000.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "dtype": "float32",
            **text,
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "out_hidden_size": 128,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            **vision,
        },
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "dtype": "float32",
    }


def _qwen3_vl_config(tokenizer, vocab_size=None):
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        **_shrunk_config(
            tokenizer,
            vocab_size=vocab_size,
            # mrope sections must sum to head_dim / 2 (real model: 24+20+20 for head_dim 128).
            text={
                "head_dim": 32,
                "rope_scaling": {
                    "rope_type": "default",
                    "mrope_section": [6, 5, 5],
                    "mrope_interleaved": True,
                },
            },
            # deepstack indexes must be below the vision depth
            vision={"patch_size": 16, "num_position_embeddings": 256, "deepstack_visual_indexes": [1]},
        )
    )


def _qwen2_5_vl_config(tokenizer, vocab_size=None):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        **_shrunk_config(
            tokenizer,
            vocab_size=vocab_size,
            # head_dim is 128/4 = 32: mrope sections sum to 16 (real model: 16+24+24 for head_dim 128).
            text={"rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}},
            vision={"patch_size": 14, "window_size": 56, "fullatt_block_indexes": [1]},
        )
    )


def _text_config(config_cls, tokenizer, vocab_size=None, **extra):
    """A text family's config shrunk as the vision ones' language model is: hidden 128, 4 layers."""
    text = _shrunk_config(tokenizer, {}, {}, vocab_size)["text_config"]
    return config_cls(**text, tie_word_embeddings=False, **extra)


def _qwen2_config(tokenizer, vocab_size=None):
    from transformers import Qwen2Config

    return _text_config(Qwen2Config, tokenizer, vocab_size)


def _qwen3_config(tokenizer, vocab_size=None):
    from transformers import Qwen3Config

    return _text_config(Qwen3Config, tokenizer, vocab_size, head_dim=32)


# Idefics3's chat markup, written for pigg in its style: "User:<image>text<end_of_utterance>\n", the
# assistant's turn "Assistant: answer<end_of_utterance>\n", a generation prompt "Assistant:".
IDEFICS3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- message.role | capitalize -}}"
    "{%- if message.content is string -%}{{- ': ' + message.content -}}"
    "{%- else -%}{{- ':' if message.content[0].type == 'image' else ': ' -}}"
    "{%- for item in message.content -%}"
    "{%- if item.type == 'image' -%}{{- '<image>' -}}{%- else -%}{{- item.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_utterance>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)
IDEFICS3_TOKENS = ["<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]
IDEFICS3_TILE = 64  # pixels of a tile's side: 4 x 4 patches of 16, 2 x 2 image tokens after the pixel shuffle


# the vision encoder both tiny Idefics share: a 64-pixel tile is 4 x 4 patches of 16
IDEFICS_VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": IDEFICS3_TILE,
    "patch_size": 16,
}


def _idefics_text(tokenizer, vocab_size, model_type: str) -> dict:
    """The language model's config (Idefics3's Llama, Idefics2's Mistral), ending turns where they do."""
    text = _shrunk_config(tokenizer, {}, {}, vocab_size)["text_config"]
    text.update(model_type=model_type, eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_utterance>"))
    return text


def _idefics3_config(tokenizer, vocab_size=None):
    from transformers import Idefics3Config

    return Idefics3Config(
        text_config=_idefics_text(tokenizer, vocab_size, "llama"),
        vision_config=IDEFICS_VISION,
        scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
        dtype="float32",
    )


def _idefics3_processor(tokenizer, max_pixels: int):
    """Idefics3's processor on pigg's tokenizer: screenshots resized to at most 4 tiles a side (or the
    side of `max_pixels`), split into 64-pixel tiles plus the global view (the PIL image processor:
    no torchvision needed)."""
    import math

    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS})
    tokenizer.eos_token = "<end_of_utterance>"  # a turn ends there: generation stops there
    longest = max(IDEFICS3_TILE, min(4 * IDEFICS3_TILE, int(math.sqrt(max_pixels))))
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": longest},
        max_image_size={"longest_edge": IDEFICS3_TILE},
        do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE
    )


def _idefics2_config(tokenizer, vocab_size=None):
    from transformers import Idefics2Config

    return Idefics2Config(
        text_config=_idefics_text(tokenizer, vocab_size, "mistral"),
        vision_config=IDEFICS_VISION,
        # the resampler turns an image's 16 patches into 4 latents: 4 image tokens an image
        perceiver_config={
            "hidden_size": 128,
            "resampler_n_latents": 4,
            "resampler_depth": 1,
            "resampler_n_heads": 4,
            "resampler_head_dim": 16,
            "num_key_value_heads": 2,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
        dtype="float32",
    )


def _idefics2_processor(tokenizer):
    """Idefics2's processor on pigg's tokenizer: each image resized to fit one 64-pixel square (no
    splitting, Idefics2's default), 4 image tokens after the resampler."""
    from transformers import Idefics2ImageProcessorPil, Idefics2Processor

    tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS[:3]})
    tokenizer.eos_token = "<end_of_utterance>"
    image_processor = Idefics2ImageProcessorPil(
        size={"shortest_edge": IDEFICS3_TILE // 2, "longest_edge": IDEFICS3_TILE},
        do_image_splitting=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics2Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE
    )


# (config builder, model class name, processor class name or None for a text model, image patch size)
_TINY = {
    "qwen3-vl": (_qwen3_vl_config, "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", 16),
    "qwen2.5-vl": (_qwen2_5_vl_config, "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", 14),
    "qwen2.5": (_qwen2_config, "Qwen2ForCausalLM", None, None),
    "qwen3": (_qwen3_config, "Qwen3ForCausalLM", None, None),
    "idefics3": (_idefics3_config, "Idefics3ForConditionalGeneration", "Idefics3Processor", 16),
    "idefics2": (_idefics2_config, "Idefics2ForConditionalGeneration", "Idefics2Processor", 16),
}
TINY_FAMILIES = tuple(_TINY)


def build_tiny(
    family: str,
    out: str | Path,
    seed: int = 0,
    max_pixels: int = 256 * 256,
    tokenizer: str | None = None,
    extra_words: list[str] | None = None,
) -> Path:
    """Write a tiny random-weight model of `family` ("qwen3-vl", "qwen2.5-vl", "idefics3", "idefics2", or the text-only
    "qwen2.5", "qwen3") to `out`; return the folder.

    `tokenizer`: a real model's folder (tokenizer, chat template, processor config; no weights needed,
    e.g. ../shared/assets/qwen3-vl-8b-instruct). The tiny model then takes that processor as it is and the
    real vocabulary (the folder's config.json's vocab_size when there is one): the shape the field's tests
    use, where the 152k-token embeddings and output layer are ~98% of the model and most of a step.

    `extra_words`: words the small tokenizer of a text-only model learns merges for (the callers pass the
    synthetic news' `pigg.data.synth.news.vocabulary()`; models sit below data and do not import it)."""
    import json

    import transformers

    from pigg.models.loading import TextProcessor, _image_only, load_processor, resolve_family

    if family not in _TINY:
        raise ValueError(f"no tiny model for {family!r}; available: {', '.join(_TINY)}")
    make_config, model_cls, proc_cls, patch = _TINY[family]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        real = Path(tokenizer)
        processor = load_processor(str(real), resolve_family(str(real)))
        vocab = None
        if (real / "config.json").exists():
            raw = json.loads((real / "config.json").read_text())
            vocab = raw.get("text_config", raw).get("vocab_size")
        config = make_config(processor.tokenizer, vocab or len(processor.tokenizer))
    elif family in ("idefics3", "idefics2"):  # their special tokens join before the config counts them
        small = build_tokenizer()
        processor = (
            _idefics3_processor(small, max_pixels) if family == "idefics3" else _idefics2_processor(small)
        )
        config = make_config(small)
    else:
        processor, small = None, build_tokenizer(extra_words=None if proc_cls else extra_words)
        config = make_config(small)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).to(torch.float32)
    text_config = getattr(config, "text_config", config)
    model.generation_config.eos_token_id = text_config.eos_token_id
    model.generation_config.pad_token_id = text_config.pad_token_id
    model.save_pretrained(out)
    if processor is None and proc_cls is None:
        processor = TextProcessor(small)
    if processor is not None:
        processor.save_pretrained(out)
        return out

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": (2 * patch) ** 2 * 4, "longest_edge": max_pixels},
    )
    processor = _image_only(getattr(transformers, proc_cls))(
        image_processor=image_processor, tokenizer=small, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    return out


def build_random(
    source: str | Path, out: str | Path, dtype: str = "bfloat16", device: str = "cpu", seed: int = 0
) -> Path:
    """Write the architecture of `source` (a folder or hub id with config.json and a processor, weights
    not needed) with random weights to `out`, with `source`'s processor; return the folder.

    Speed and memory do not depend on the weights' values, so benchmarks run on these; their answers are
    noise. Weights are initialised on `device` ("cuda" makes an 8B model in seconds)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from pigg.errors import ConfigError
    from pigg.models.loading import load_processor, resolve_family

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; give an empty or new folder")
    family = resolve_family(str(source))  # a missing folder or unreadable config is a ConfigError here
    config = AutoConfig.from_pretrained(source)
    processor = load_processor(str(source), family)
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if family.has_vision else AutoModelForCausalLM
    with torch.device(device):
        model = auto.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "README.md").write_text(
        f"Random weights in the architecture of {source} (pigg model random): for speed and memory "
        "measurements only; its answers are noise.\n"
    )
    return out
