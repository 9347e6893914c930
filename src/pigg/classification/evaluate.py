"""`pigg eval` of a classification run (seed 004): labels by generation or by likelihood, the metrics, the
throughput, and a report.

Two ways to ask a model for a label, on exactly the same samples and prompts (rendered by the training
Renderer, minus the answer):
- generate: batched greedy generation; the answer is read strictly (pigg.data.labels): anything that
  is not `{"category": ...}` or a bare label is a counted parse failure, never a guess. This is what seed
  004 measured, and what serving does.
- likelihood: every label's answer is scored as a continuation of the prompt (the sum of its tokens'
  log-probabilities, the answer's end token included) and the most likely label is the prediction: no
  generation, no parse failure; one forward per sample and label.

Throughput is measured on the pass itself: items/s over the whole pass; a sample's latency is the time
of the batch it was answered in (from its submission to its answer), so mean / p50 / p95 latency grow
with the batch size while items/s rises; tokens/s counts prompt and generated tokens (padding excluded).
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pigg.classification.metrics import ClassificationScore, score_labels
from pigg.config import ClassifySection
from pigg.data.labels import parse_label
from pigg.data.render import IGNORE_INDEX, assistant_spans, pad_batch, prompt_messages, render_text
from pigg.data.sample import Sample
from pigg.data.tables import answer_text
from pigg.progress import progress_bar
from pigg.train.loss import next_token_targets

MODES = ("generate", "likelihood")


@dataclass
class Throughput:
    items: int
    batch_size: int
    seconds: float
    items_per_second: float
    latency_ms_mean: float
    latency_ms_p50: float
    latency_ms_p95: float
    prompt_tokens: int
    generated_tokens: int
    tokens_per_second: float  # prompt + generated tokens, padding excluded

    @classmethod
    def of(cls, batches: list[tuple[int, float]], batch_size: int, prompt: int, generated: int) -> Throughput:
        """From (items, seconds) per batch: every item of a batch waited the batch's time."""
        latencies = sorted(seconds * 1000 for items, seconds in batches for _ in range(items))
        total = sum(seconds for _, seconds in batches)
        items = len(latencies)
        return cls(
            items=items,
            batch_size=batch_size,
            seconds=round(total, 4),
            items_per_second=round(items / total, 3) if total else 0.0,
            latency_ms_mean=round(statistics.fmean(latencies), 2),
            latency_ms_p50=round(_percentile(latencies, 50), 2),
            latency_ms_p95=round(_percentile(latencies, 95), 2),
            prompt_tokens=prompt,
            generated_tokens=generated,
            tokens_per_second=round((prompt + generated) / total, 1) if total else 0.0,
        )


def _percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values, linear between neighbours (numpy's default)."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Prediction:
    source: str
    gold: str
    predicted: str | None  # None: the answer names no label (generation only)
    raw: str  # the generated text, or the label's answer text in likelihood mode
    log_likelihoods: dict[str, float] | None = None


@dataclass
class ModelResult:
    """One model's labels for the samples, by one mode, with their score and throughput."""

    model: str
    mode: str
    predictions: list[Prediction]
    score: ClassificationScore
    throughput: Throughput
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.model if self.mode == "generate" else f"{self.model} ({self.mode})"


def gold_labels(samples: list[Sample]) -> list[str]:
    missing = [s.source for s in samples if "label" not in s.meta]
    if missing:
        raise ValueError(f"{len(missing)} sample(s) have no gold label, e.g. {missing[0]}")
    return [s.meta["label"] for s in samples]


def generate_labels(agent, samples: list[Sample], spec: ClassifySection, batch_size: int, progress=None):
    """Greedy answers, read strictly; (predictions, throughput)."""
    tokenizer = agent.processor.tokenizer
    predictions, batches = [], []
    prompt_tokens = generated = 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [prompt_messages(agent.renderer.messages(s)) for s in chunk]
        inputs = agent.prompt_inputs(prompts, [[] for _ in chunk])  # rendered as training renders them
        began = time.perf_counter()
        new = agent.generate_ids(inputs)
        batches.append((len(chunk), time.perf_counter() - began))
        prompt_tokens += int(inputs["attention_mask"].sum())
        generated += _generated_tokens(new, agent.renderer.markers)
        for sample, raw in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
            predicted = parse_label(raw, spec.labels, spec.key)
            predictions.append(Prediction(sample.source, sample.meta["label"], predicted, raw))
        if progress:
            progress(len(predictions), len(samples))
    return predictions, Throughput.of(batches, batch_size, prompt_tokens, generated)


def _generated_tokens(new: torch.Tensor, markers) -> int:
    """Tokens generated per row up to and including its end token (rows that finished early are padded)."""
    count = 0
    for row in new.tolist():
        count += next((i + 1 for i, t in enumerate(row) if t == markers.turn_end), len(row))
    return count


def _candidate_batch(agent, chunk: list[Sample], spec: ClassifySection):
    """Every sample's prompt followed by every label's answer: rows of input ids and answer-only labels."""
    rows = []
    for sample in chunk:
        prompt = prompt_messages(agent.renderer.messages(sample))
        for label in spec.labels:
            answer = {"role": "assistant", "content": [{"type": "text", "text": answer_text(label, spec)}]}
            ids = agent.processor.tokenizer(render_text(agent.processor, [*prompt, answer]))["input_ids"]
            # only this answer counts: earlier assistant turns of a chat row are the same for every label
            start, stop = assistant_spans(ids, agent.renderer.markers)[-1]
            only_last = [IGNORE_INDEX] * start + ids[start:stop] + [IGNORE_INDEX] * (len(ids) - stop)
            rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(only_last)})
    for row in rows:
        row["attention_mask"] = torch.ones_like(row["input_ids"])
    return pad_batch(rows, agent.renderer.markers.pad)


def answer_log_likelihoods(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row, the summed log-probability of its labelled tokens given what precedes them; the output
    layer runs at those positions only (the training loss's boolean `logits_to_keep`)."""
    labels = batch["labels"]
    targets = next_token_targets(labels)
    keep = targets != IGNORE_INDEX
    with torch.inference_mode():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=keep,
            use_cache=False,
        ).logits
    logits = logits.reshape(-1, logits.shape[-1]).float()
    token_logp = -F.cross_entropy(logits, targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    return torch.zeros(labels.shape[0], device=token_logp.device).index_add_(0, rows, token_logp)


def likelihood_labels(agent, samples: list[Sample], spec: ClassifySection, batch_size: int, progress=None):
    """The most likely label's answer per sample; (predictions, throughput). `batch_size` counts samples
    (each brings one row per label)."""
    predictions, batches = [], []
    prompt_tokens = 0
    n = len(spec.labels)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = _candidate_batch(agent, chunk, spec)
        device_batch = {k: v.to(agent.model.device) for k, v in batch.items()}
        began = time.perf_counter()
        scores = answer_log_likelihoods(agent.model, device_batch).cpu()
        batches.append((len(chunk), time.perf_counter() - began))
        prompt_tokens += int(batch["attention_mask"].sum())
        for k, sample in enumerate(chunk):
            row = scores[k * n : (k + 1) * n].tolist()
            best = max(range(n), key=row.__getitem__)
            predictions.append(
                Prediction(
                    sample.source,
                    sample.meta["label"],
                    spec.labels[best],
                    answer_text(spec.labels[best], spec),
                    {label: round(v, 4) for label, v in zip(spec.labels, row, strict=True)},
                )
            )
        if progress:
            progress(len(predictions), len(samples))
    return predictions, Throughput.of(batches, batch_size, prompt_tokens, 0)


def evaluate_classifier(agent, samples: list[Sample], spec: ClassifySection, modes, batch_size: int):
    """The agent's results on `samples` by each mode, in order."""
    gold = gold_labels(samples)
    results = []
    for mode in modes:
        run = generate_labels if mode == "generate" else likelihood_labels
        with progress_bar(len(samples), f"{mode} {agent.label}", unit="items") as advance:
            predictions, throughput = run(agent, samples, spec, batch_size, advance)
        score = score_labels(gold, [p.predicted for p in predictions], spec.labels)
        results.append(ModelResult(agent.label, mode, predictions, score, throughput))
    return results


def write_report(results: list[ModelResult], out: Path, described: dict) -> Path:
    """OUT/classification.json (metrics, throughput, settings), .md, confusion.png (every model and mode
    side by side) and one predictions JSONL per model and mode; returns the JSON's path."""
    from pigg.classification.report import confusion_png, markdown

    out.mkdir(parents=True, exist_ok=True)
    scores = {r.name: r.score for r in results}
    png = confusion_png(scores, out / "confusion.png")
    files = {}
    for r in results:
        name = f"predictions_{_slug(r.model)}_{r.mode}.jsonl"
        with (out / name).open("w") as handle:
            for p in r.predictions:
                handle.write(json.dumps(asdict(p)) + "\n")
        files[r.name] = name
    report = {
        **described,
        "results": {
            r.name: {
                "model": r.model,
                "mode": r.mode,
                "accuracy": r.score.accuracy,
                "macro_f1": r.score.macro_f1,
                "parse_failures": r.score.parse_failures,
                "score": r.score.to_dict(),
                "throughput": asdict(r.throughput),
                "predictions": files[r.name],
            }
            for r in results
        },
        "confusion_png": str(png),
    }
    path = out / "classification.json"
    path.write_text(json.dumps(report, indent=2))
    (out / "classification.md").write_text(markdown(scores) + "\n\n" + throughput_table(results) + "\n")
    return path


def throughput_table(results: list[ModelResult]) -> str:
    lines = [
        "| model | items/s | batch | latency mean | p50 | p95 | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t = r.throughput
        lines.append(
            f"| {r.name} | {t.items_per_second:.1f} | {t.batch_size} | {t.latency_ms_mean:.0f} ms | "
            f"{t.latency_ms_p50:.0f} ms | {t.latency_ms_p95:.0f} ms | {t.tokens_per_second:.0f} |"
        )
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def classify_config(ref, data: str | None, max_samples: int | None):
    """The run's config set up to read the evaluation samples: `--data`, else the run's data.eval_path."""
    from pigg.config import load_config
    from pigg.errors import ConfigError
    from pigg.train.run import RUN_CONFIG

    overrides = [f"model.name={ref.base}", "train.eval=false"]
    if max_samples is not None:
        overrides.append(f"data.max_samples={max_samples}")
    cfg = load_config(ref.run_dir / RUN_CONFIG, overrides)
    path = data or cfg.data.eval_path
    if path is None:
        raise ConfigError(f"{ref.run_dir} has no data.eval_path: say which data to evaluate on with --data")
    cfg.data.path = str(path)
    return cfg


def run_classify_eval(refs, cfg, samples: list[Sample], out: Path, modes, batch_size: int) -> Path:
    """Each model loaded in turn, asked by each mode on the same samples; the report's JSON path."""
    from pigg.infer import Agent

    results = []
    for ref in refs:
        agent = Agent.load(ref, max_new_tokens=cfg.eval.max_new_tokens)
        for result in evaluate_classifier(agent, samples, cfg.classify, modes, batch_size):
            t = result.throughput
            print(
                f"{result.name}: accuracy {100 * result.score.accuracy:.2f}%, macro-F1 "
                f"{100 * result.score.macro_f1:.2f}%, parse failures {result.score.parse_failures}; "
                f"{t.items_per_second:.1f} items/s, latency p50 {t.latency_ms_p50:.0f} ms (batch {batch_size})"
            )
            results.append(result)
        del agent
        gc.collect()
    described = {
        "task": "classify",
        "data": cfg.data.eval_path or cfg.data.path,
        "samples": len(samples),
        "labels": cfg.classify.labels,
        "modes": list(modes),
        "batch_size": batch_size,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "models": [r.__dict__ for r in refs],
    }
    return write_report(results, out, described)
