"""The training collator: padded batches, or padding-free packed rows, plus padding statistics.

Packing puts a micro-batch's samples into as few rows of at most `pack_length` tokens as possible (first
fit, longest first). Each sample keeps its own positions: for a vision-language model the multimodal
rotary positions (t, h, w) are computed per sample by the model's own `get_rope_index`, and a
text-position row restarting at 0 leads them (Qwen-VL models take position_ids of shape 4 x batch x
length); a text model takes the text positions alone (batch x length). No attention mask is passed, so
transformers builds a block-diagonal causal mask from those restarting positions (flash-attention uses
them as variable-length boundaries): no token attends across samples. The first label of every sample
is ignored, so no token learns to predict the next sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pigg.data.render import IGNORE_INDEX, Renderer, pad_batch, require_trained_tokens
from pigg.data.sample import Sample
from pigg.errors import DataError

STATS_KEY = "pigg_tokens"  # [real tokens, tokens computed if padded per batch, tokens computed as sent]


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= capacity, longest first (first-fit decreasing)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[index] > capacity:
            raise DataError(f"a sample of {lengths[index]} tokens does not fit data.pack_length={capacity}")
        for b, free in enumerate(room):
            if lengths[index] <= free:
                bins[b].append(index)
                room[b] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return [sorted(b) for b in bins]  # keep the data order inside a row


def rope_index_of(model) -> Callable:
    """The multimodal rotary-position function of a Qwen-VL model (peft-wrapped or not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.get_rope_index


class TrainingCollator:
    """What the Trainer calls: renders samples, then pads them into a batch or packs them into rows."""

    def __init__(
        self, renderer: Renderer, rope_index: Callable | None = None, pack_length: int | None = None
    ):
        if renderer.family.has_vision and (rope_index is None) != (pack_length is None):
            raise ValueError("packing a vision-language model needs both its rope index and a pack length")
        self.renderer = renderer
        self.rope_index = rope_index
        self.pack_length = pack_length

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        encoded = [self.renderer.encode(s) for s in samples]
        require_trained_tokens(encoded, samples)
        lengths = [len(e["input_ids"]) for e in encoded]
        padded = len(lengths) * max(lengths)
        if self.renderer.family.has_vision and not any("pixel_values" in e for e in encoded):
            encoded = [*encoded, self.renderer.vision_filler()]  # see Renderer.vision_filler
        if self.pack_length is None:
            batch = pad_batch(encoded, self.renderer.markers.pad)
        else:
            batch = self.pack(encoded, [len(e["input_ids"]) for e in encoded])
        batch[STATS_KEY] = torch.tensor([sum(lengths), padded, batch["input_ids"].numel()])
        # No KV cache in training. The Trainer turns off only the top-level config's use_cache, and
        # Qwen-VL's language model reads its text_config's (true), so every training forward would fill
        # a cache; transformers also detects packed rows only without one (a cache means generation).
        batch["use_cache"] = False
        return batch

    def _positions(self, e: dict[str, torch.Tensor]) -> torch.Tensor:
        """(4, length): text positions, then the sample's own t/h/w rotary positions; (1, length) for a
        text model."""
        ids = e["input_ids"][None]
        if self.rope_index is None:
            return torch.arange(ids.shape[1])[None]
        rope, _ = self.rope_index(
            input_ids=ids,
            mm_token_type_ids=e["mm_token_type_ids"][None],
            image_grid_thw=e.get("image_grid_thw"),
        )
        text = torch.arange(ids.shape[1], dtype=rope.dtype)[None]
        return torch.cat([text, rope[:, 0]], dim=0)

    def pack(self, encoded: list[dict[str, torch.Tensor]], lengths: list[int]) -> dict[str, torch.Tensor]:
        rows = first_fit(lengths, self.pack_length)
        width = max(sum(lengths[i] for i in row) for row in rows)
        pad_id = self.renderer.markers.pad
        ids, labels, types, positions, pixels, grids = [], [], [], [], [], []
        vision = self.rope_index is not None
        for row in rows:
            parts = [encoded[i] for i in row]
            row_labels = []
            for e in parts:
                first_ignored = e["labels"].clone()
                first_ignored[0] = IGNORE_INDEX
                row_labels.append(first_ignored)
            fill = width - sum(lengths[i] for i in row)
            ids.append(torch.cat([*(e["input_ids"] for e in parts), torch.full((fill,), pad_id)]))
            labels.append(torch.cat([*row_labels, torch.full((fill,), IGNORE_INDEX)]))
            if vision:
                kinds = [e["mm_token_type_ids"] for e in parts]
                types.append(torch.cat([*kinds, torch.zeros(fill, dtype=kinds[0].dtype)]))
            # the padding tail is one more sequence of its own, starting at position 0
            tail = torch.arange(fill)[None].expand(4 if vision else 1, -1)
            positions.append(torch.cat([*(self._positions(e) for e in parts), tail], dim=1))
            pixels.extend(e["pixel_values"] for e in parts if "pixel_values" in e)
            grids.extend(e["image_grid_thw"] for e in parts if "image_grid_thw" in e)
        batch = {
            "input_ids": torch.stack(ids),
            "labels": torch.stack(labels),
            "position_ids": torch.stack(positions, dim=1),  # 4 x rows x width
        }
        if not vision:
            batch["position_ids"] = batch["position_ids"][0]  # rows x width
        else:
            batch["mm_token_type_ids"] = torch.stack(types)
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
            batch["image_grid_thw"] = torch.cat(grids)
        return batch
