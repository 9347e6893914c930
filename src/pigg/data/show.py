"""`pigg data show`: one sample through the real collation path, with the trained spans made visible."""

from __future__ import annotations

from dataclasses import dataclass

from pigg.data.render import IGNORE_INDEX, Renderer
from pigg.data.sample import Sample

TRAIN_OPEN, TRAIN_CLOSE = "[[", "]]"


@dataclass
class ShownSample:
    source: str
    input_ids: list[int]
    labels: list[int]
    text: str  # the decoded sequence, trained spans between [[ and ]], image tokens collapsed

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "length": len(self.input_ids),
            "trained_tokens": self.trained_tokens,
            "input_ids": self.input_ids,
            "labels": self.labels,
        }


def show_sample(sample: Sample, renderer: Renderer) -> ShownSample:
    encoded = renderer.encode(sample)
    ids = encoded["input_ids"].tolist()
    labels = encoded["labels"].tolist()
    tokenizer = renderer.processor.tokenizer
    pieces: list[str] = []
    i = 0
    while i < len(ids):
        trained = labels[i] != IGNORE_INDEX
        j = i
        while j < len(ids) and (labels[j] != IGNORE_INDEX) == trained:
            j += 1
        text = _decode_run(ids[i:j], tokenizer, renderer.markers.image_pad)
        pieces.append(f"{TRAIN_OPEN}{text}{TRAIN_CLOSE}" if trained else text)
        i = j
    return ShownSample(sample.source, ids, labels, "".join(pieces))


def _decode_run(ids: list[int], tokenizer, image_pad: int) -> str:
    """Decode, writing a run of image tokens as one `<|image_pad|>×N`."""
    out, k = [], 0
    while k < len(ids):
        if ids[k] == image_pad:
            n = k
            while n < len(ids) and ids[n] == image_pad:
                n += 1
            out.append(f"{tokenizer.convert_ids_to_tokens(image_pad)}×{n - k}")
            k = n
        else:
            n = k
            while n < len(ids) and ids[n] != image_pad:
                n += 1
            out.append(tokenizer.decode(ids[k:n], skip_special_tokens=False))
            k = n
    return "".join(out)
