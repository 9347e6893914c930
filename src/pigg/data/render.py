"""Messages → input ids + assistant-only labels, and batches of them. One path for training, `data show`,
validation and evaluation loss, so they can never disagree about what a sample is.

Policy and mechanism are separate: `assistant_spans` finds every assistant answer (the mechanism); which
turns train is decided in `labels_for` (all assistant turns: the policy). Trained tokens are the answer
and the turn's end token; the header, the prompt, image tokens and padding are IGNORE_INDEX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pigg.data.sample import Sample, image_size, load_image
from pigg.errors import DataError, reading
from pigg.models.coords import format_point, to_model
from pigg.models.families import Family

IGNORE_INDEX = -100
# what a processor returns for the images of a sample: Qwen's patches and grid sizes, Idefics3's tiles
IMAGE_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask")


@dataclass(frozen=True)
class Markers:
    """Token ids of the chat markup, looked up in the tokenizer (never hard-coded)."""

    assistant_header: tuple[int, ...]
    turn_end: int
    image_pad: int  # -1 for a text family: no token id matches it
    pad: int

    @classmethod
    def of(cls, tokenizer, family: Family) -> Markers:
        header = tuple(tokenizer.encode(family.assistant_header, add_special_tokens=False))
        end = tokenizer.convert_tokens_to_ids(family.turn_end)
        pad_token = tokenizer.convert_tokens_to_ids(family.image_pad) if family.image_pad else -1
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        return cls(header, end, pad_token, pad)


def assistant_spans(ids: list[int], markers: Markers) -> list[tuple[int, int]]:
    """[start, stop) of every assistant answer: after the header, through the turn-end token."""
    header, n = list(markers.assistant_header), len(markers.assistant_header)
    spans = []
    i = 0
    while i <= len(ids) - n:
        if ids[i : i + n] == header:
            start = i + n
            stop = start
            while stop < len(ids) and ids[stop] != markers.turn_end:
                stop += 1
            stop = min(stop + 1, len(ids))  # include the end token when present
            spans.append((start, stop))
            i = stop
        else:
            i += 1
    return spans


def labels_for(ids: list[int], markers: Markers) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for start, stop in assistant_spans(ids, markers):
        labels[start:stop] = ids[start:stop]
    return labels


def chat_messages(
    sample: Sample, family: Family, system_turns: str, image_processor=None
) -> list[dict[str, Any]]:
    """The sample's messages as the chat template gets them.

    The system-turn policy is applied: `to_user` reproduces seed 000 (system text sent as a user turn);
    `keep` and `auto` keep the system turn, which both Qwen-VL templates render natively. A sample whose
    answer is derived from its target (`answer_from_target`, as pigg's synthetic data is) gets its last
    answer written in the family's coordinates here, the one place a stored pixel target becomes text.
    """
    messages = sample.messages
    if system_turns == "to_user" or (system_turns == "auto" and not family.renders_system_turn):
        messages = [{**m, "role": "user"} if m["role"] == "system" else m for m in messages]
    if sample.meta.get("answer_from_target") and sample.target and sample.target.point:
        size = image_size(sample.image_refs()[-1], sample.base_dir)  # the current screen
        answer = format_point(to_model(sample.target.point, size, family, image_processor))
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        messages = [*messages[:last], {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        messages += sample.messages[last + 1 :]
    return messages


def prompt_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to (not including) its last assistant turn: what a model is asked."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    return messages[:last]


def render_text(processor, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


class Renderer:
    """Turns samples into model inputs for one processor and family."""

    def __init__(
        self,
        processor,
        family: Family,
        system_turns: str = "auto",
        max_length: int | None = None,
        image_cache=None,
    ):
        self.processor = processor
        self.family = family
        self.system_turns = system_turns
        self.max_length = max_length
        self.markers = Markers.of(processor.tokenizer, family)
        # an ImageCache (data.image_cache): screenshots decoded and resized once, not every epoch
        self.load_image = image_cache.load if image_cache is not None else load_image
        self._filler: dict[str, torch.Tensor] | None = None  # built on first use: vision_filler

    def messages(self, sample: Sample) -> list[dict[str, Any]]:
        return chat_messages(sample, self.family, self.system_turns, self.processor.image_processor)

    def encode(self, sample: Sample) -> dict[str, torch.Tensor]:
        """One sample → 1-D input_ids and labels, plus its images' pixel_values and grid sizes."""
        with reading(sample.source):
            return self._encode(sample)

    def _encode(self, sample: Sample, check_length: bool = True) -> dict[str, torch.Tensor]:
        try:
            images = [self.load_image(ref, sample.base_dir) for ref in sample.image_refs()]
        except DataError as exc:
            raise DataError(f"{sample.source}: {exc}") from None
        text = render_text(self.processor, self.messages(sample))
        out = self.processor(text=[text], images=images or None, return_tensors="pt")
        ids = out["input_ids"][0]
        if check_length and self.max_length is not None and len(ids) > self.max_length:
            raise DataError(
                f"{sample.source}: {len(ids)} tokens exceed data.max_length={self.max_length}; "
                "run validation first (it reports where the cut would fall)"
            )
        encoded = {
            k: v[0] for k, v in out.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")
        }
        encoded["labels"] = torch.tensor(labels_for(ids.tolist(), self.markers))
        if images:
            encoded.update({k: out[k] for k in IMAGE_KEYS if k in out})
        return encoded

    def measure(self, sample: Sample) -> dict[str, torch.Tensor]:
        """The sample rendered whatever its length (validation measures tiled-image families this way)."""
        with reading(sample.source):
            return self._encode(sample, check_length=False)

    def vision_filler(self) -> dict[str, torch.Tensor]:
        """A row holding one small blank image and no trained token, for a batch without images.

        With it every process runs the vision tower at every step. Without it, a process whose batch is
        text-only skips the tower: under FSDP and ZeRO-3 the others then wait forever for its share of the
        tower's parameters, and under DDP its gradients never arrive. Rows do not attend to each other and
        the filler trains no token, so the loss and the gradients are those of the real rows.
        """
        if self._filler is None:
            from PIL import Image

            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "."}]}]
            text = render_text(self.processor, messages)
            out = self.processor(text=[text], images=[Image.new("RGB", (32, 32))], return_tensors="pt")
            filler = {k: out[k][0] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in out}
            filler["labels"] = torch.full_like(filler["input_ids"], IGNORE_INDEX)
            filler.update({k: out[k] for k in IMAGE_KEYS if k in out})
            self._filler = filler
        return self._filler

    def collate(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Encode and right-pad a batch; a batch with no trained token is an error, not a zero loss."""
        encoded = [self.encode(s) for s in samples]
        require_trained_tokens(encoded, samples)
        return pad_batch(encoded, self.markers.pad)


def require_trained_tokens(encoded: list[dict[str, torch.Tensor]], samples: list[Sample]) -> None:
    if all((e["labels"] != IGNORE_INDEX).sum() == 0 for e in encoded):
        sources = ", ".join(s.source for s in samples)
        raise DataError(f"no trainable (assistant) token in batch [{sources}]: check the chat template")


def pad_batch(encoded: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in encoded)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0, "mm_token_type_ids": 0}
    batch: dict[str, torch.Tensor] = {}
    for key, value in fill.items():
        if key in encoded[0]:
            rows = [torch.nn.functional.pad(e[key], (0, width - len(e[key])), value=value) for e in encoded]
            batch[key] = torch.stack(rows)
    with_images = [e for e in encoded if "pixel_values" in e]
    if with_images and with_images[0]["pixel_values"].dim() == 5:
        batch.update(_stack_tiles(encoded))
    elif with_images:
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
        batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
    return batch


def _stack_tiles(encoded: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Images as tiles (Idefics3: 1 x tiles x 3 x H x W per row; Idefics2: one tile of the image's own
    size) as one tensor per batch, as their processors batch them: every row padded to the most tiles and
    the largest height and width with zeros (a zero pixel mask), which the model drops or masks; a row
    without images gets only such padding."""
    present = [e for e in encoded if "pixel_values" in e]
    channels = present[0]["pixel_values"].shape[2]
    most = max(e["pixel_values"].shape[1] for e in present)
    height = max(e["pixel_values"].shape[3] for e in present)
    width = max(e["pixel_values"].shape[4] for e in present)
    pixels = torch.zeros(len(encoded), most, channels, height, width, dtype=present[0]["pixel_values"].dtype)
    masks = torch.zeros(len(encoded), most, height, width, dtype=torch.long)
    for row, e in enumerate(encoded):
        if "pixel_values" not in e:
            continue
        _, n, _, h, w = e["pixel_values"].shape
        pixels[row, :n, :, :h, :w] = e["pixel_values"][0]
        mask = e.get("pixel_attention_mask")
        masks[row, :n, :h, :w] = mask[0] if mask is not None else 1
    return {"pixel_values": pixels, "pixel_attention_mask": masks}
