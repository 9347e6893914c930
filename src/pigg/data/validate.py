"""The up-front check of a whole data set, before any weights load.

Every problem is reported with its file, sample index and cause. Lengths are computed exactly as the
processor will produce them (rendered text tokenised, each image placeholder expanded by the image's
token count from its header size), without decoding pixels, so a 100k-sample set checks in about a minute.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pigg.data.render import Renderer, assistant_spans, render_text
from pigg.data.sample import Problem, Sample, image_size
from pigg.errors import DataError, reading
from pigg.models.coords import image_token_count


@dataclass
class Layout:
    """Where things sit in a rendered sample's token sequence."""

    length: int
    image_spans: list[tuple[int, int]]
    trained_spans: list[tuple[int, int]]


@dataclass
class ValidationReport:
    samples: list[Sample]  # the usable ones
    problems: list[Problem]
    checked: int
    # (text tokens, image tokens) of each usable sample, as the processor will produce them
    tokens: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _structure_problems(sample: Sample, special_tokens: list[str]) -> list[str]:
    """What the readers cannot see alone: the conversation's shape, and chat markup in its text."""
    causes = []
    roles = [m["role"] for m in sample.messages]
    if "user" not in roles:
        causes.append("no user turn: nothing to answer")
    if "assistant" not in roles:
        causes.append("no assistant turn: nothing to train on")
    for t, message in enumerate(sample.messages):
        for item in message["content"]:
            marker = next((m for m in special_tokens if item["type"] == "text" and m in item["text"]), None)
            if marker:
                # it would be read as the template's own markup: a fake turn, trained as an answer
                causes.append(f"turn {t} text contains the chat template's special token {marker}")
                break
    for t, message in enumerate(sample.messages):
        if message["role"] == "assistant":
            text = "".join(i.get("text", "") for i in message["content"] if i["type"] == "text")
            if not text.strip():
                causes.append(f"empty answer in assistant turn {t}")
            if any(i["type"] == "image" for i in message["content"]):
                causes.append(f"assistant turn {t} contains an image")
    return causes


def special_tokens(tokenizer) -> list[str]:
    """The tokenizer's special tokens (Qwen's <|im_start|>, <|im_end|>, <|image_pad|>, ...): text that
    holds one is tokenized as markup, not as the characters."""
    added = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    return sorted(set(added) | set(tokenizer.all_special_tokens))


def layout_of(ids: list[int], image_tokens: list[int], renderer: Renderer) -> Layout:
    """Expand each image placeholder of unexpanded `ids` and locate image and answer spans."""
    expanded: list[int] = []
    image_spans = []
    counts = iter(image_tokens)
    for token in ids:
        if token == renderer.markers.image_pad:
            n = next(counts)
            image_spans.append((len(expanded), len(expanded) + n))
            expanded.extend([token] * n)
        else:
            expanded.append(token)
    return Layout(len(expanded), image_spans, assistant_spans(expanded, renderer.markers))


def _length_problem(layout: Layout, max_length: int) -> str | None:
    if layout.length <= max_length:
        return None
    for k, (start, stop) in enumerate(layout.image_spans):
        if start < max_length < stop:
            return (
                f"{layout.length} tokens > data.max_length={max_length}: truncation would cut through "
                f"image {k + 1}'s tokens ({start}-{stop}), leaving text and image features out of step; "
                "raise max_length or lower model.max_pixels"
            )
    for start, stop in layout.trained_spans:
        if stop > max_length:
            return (
                f"{layout.length} tokens > data.max_length={max_length}: the answer (tokens {start}-{stop}) "
                "would be cut off; raise max_length or lower model.max_pixels"
            )
    return f"{layout.length} tokens > data.max_length={max_length}"


def _layout_problem(layout: Layout, max_length: int) -> str | None:
    """What makes a rendered sample unusable: no answer to train on, or a length over max_length."""
    if not any(stop > start for start, stop in layout.trained_spans):
        return "no answer tokens found after rendering the chat template"
    return _length_problem(layout, max_length)


def _check_sample(sample: Sample, renderer: Renderer, special: list[str]):
    """The sample's problems (a list of causes), or (sample, rendered text, image token counts)."""
    image_processor = renderer.processor.image_processor
    causes = _structure_problems(sample, special)
    if not renderer.family.has_vision and sample.image_refs():
        causes.append(
            f"holds {len(sample.image_refs())} image(s), and the {renderer.family.name} model is text-only"
        )
        return causes
    token_counts: list[int] | None = [] if renderer.family.image_sizing == "qwen" else None
    size = None
    for k, ref in enumerate(sample.image_refs()):
        try:
            size = width, height = image_size(ref, sample.base_dir)
        except DataError as exc:
            causes.append(f"image {k + 1}: {exc}")
            continue
        if token_counts is None:
            continue  # tiled images: measured by rendering the sample (validate)
        try:  # the processor's own limits (Qwen's: aspect ratio under 200), asked, not restated
            token_counts.append(image_token_count(image_processor, width, height))
        except ValueError as exc:
            causes.append(f"image {k + 1}: the processor refuses a {width}x{height} image: {exc}")
    if sample.target is not None and size is not None and (outside := sample.target.outside(*size)):
        causes.append(outside)  # the last image is the screen the target is on
    if causes:
        return causes
    return sample, render_text(renderer.processor, renderer.messages(sample)), token_counts


def validate(samples: list[Sample], renderer: Renderer, max_length: int) -> ValidationReport:
    """Check every sample; return the usable ones and one Problem per cause found."""
    problems: list[Problem] = []
    candidates: list[tuple[Sample, str, list[int]]] = []
    special = special_tokens(renderer.processor.tokenizer)
    for sample in samples:
        with reading(sample.source):
            candidate = _check_sample(sample, renderer, special)
        if isinstance(candidate, list):
            problems.extend(Problem(sample.source, c) for c in candidate)
        else:
            candidates.append(candidate)

    usable = []
    tokens = []
    tokenizer = renderer.processor.tokenizer
    if renderer.family.image_sizing != "qwen":
        return _validate_rendered(candidates, renderer, max_length, problems, len(samples))
    for chunk_start in range(0, len(candidates), 1024):
        chunk = candidates[chunk_start : chunk_start + 1024]
        encoded = tokenizer([text for _, text, _ in chunk], add_special_tokens=False)["input_ids"]
        for (sample, _, counts), ids in zip(chunk, encoded, strict=True):
            if ids.count(renderer.markers.image_pad) != len(counts):
                problems.append(
                    Problem(sample.source, "image placeholders in the text do not match its images")
                )
                continue
            layout = layout_of(ids, counts, renderer)
            cause = _layout_problem(layout, max_length)
            if cause:
                problems.append(Problem(sample.source, cause))
                continue
            usable.append(sample)
            image_tokens = sum(stop - start for start, stop in layout.image_spans)
            tokens.append((layout.length - image_tokens, image_tokens))
    return ValidationReport(usable, problems, len(samples), tokens)


def _validate_rendered(
    candidates, renderer: Renderer, max_length: int, problems, checked
) -> ValidationReport:
    """Lengths of a tiled-image family's samples (Idefics3: tiles, row markers and a global view per
    image, which depend on the processor's resizing), measured by rendering each sample."""
    usable, tokens = [], []
    for sample, _, _ in candidates:
        try:
            encoded = renderer.measure(sample)
        except DataError as exc:
            problems.append(Problem(sample.source, str(exc).removeprefix(f"{sample.source}: ")))
            continue
        ids = encoded["input_ids"].tolist()
        images = [i for i, t in enumerate(ids) if t == renderer.markers.image_pad]
        spans = [(images[0], images[-1] + 1)] if images else []  # every image's tiles, as one stretch
        layout = Layout(len(ids), spans, assistant_spans(ids, renderer.markers))
        cause = _layout_problem(layout, max_length)
        if cause:
            problems.append(Problem(sample.source, cause))
            continue
        usable.append(sample)
        tokens.append((len(ids) - len(images), len(images)))
    return ValidationReport(usable, problems, checked, tokens)


def enforce(
    report: ValidationReport, on_error: str, run_dir: Path | None = None, purpose: str = "train"
) -> list[Sample]:
    """Apply `data.on_error`: stop with every problem listed, or skip the bad samples and record them.
    `purpose` (train, evaluate) is what the samples are for, as the message tells the user."""
    if report.ok:
        return report.samples
    if on_error == "skip":
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            with (run_dir / "skipped_samples.jsonl").open("w") as handle:
                for problem in report.problems:
                    handle.write(json.dumps({"source": problem.source, "cause": problem.cause}) + "\n")
        return report.samples
    shown = "\n".join(f"  - {p}" for p in report.problems[:50])
    more = f"\n  ... and {len(report.problems) - 50} more" if len(report.problems) > 50 else ""
    fix = (
        f"Fix them, or set data.on_error=skip to {purpose} on the {len(report.samples)} good samples"
        if report.samples
        else "No sample is usable: fix them"
    )
    done = "trained" if purpose == "train" else "evaluated"
    raise DataError(
        f"{len(report.problems)} problem(s) in {report.checked} samples; nothing was {done}. "
        f"{fix}:\n{shown}{more}"
    )
