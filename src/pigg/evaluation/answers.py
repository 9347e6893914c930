"""Asking a model for every sample's answer, and scoring them with a task.

Every model sees exactly the same samples in the same order; the prompt is rendered by the same Renderer
as in training (minus the answer). Two ways to ask:
- generate: batched greedy generation; the task reads each answer (never a guess: what it cannot read is
  a counted parse failure). This is what seed 004 measured and what serving does.
- likelihood (tasks with fixed choices, e.g. classification's labels): every choice's answer is scored
  as a continuation of the prompt (the sum of its tokens' log-probabilities, the answer's end token
  included) and the most likely one is the answer: no generation, no parse failure; one forward per
  sample and choice.
Evaluation loss goes through the training collator, so train and eval never disagree about a sample.
Throughput is measured on the pass itself (`tasks.base.Throughput`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from pigg.data.render import IGNORE_INDEX, Renderer, assistant_spans, pad_batch, render_text
from pigg.data.sample import Sample
from pigg.infer import Agent
from pigg.progress import progress_bar
from pigg.tasks.base import ModelResult, Task, Throughput
from pigg.tasks.grounding import Click, GroundingTask
from pigg.train.loss import causal_lm_loss, next_token_targets

MODES = ("generate", "likelihood")


def generate_answers(agent: Agent, task: Task, samples: list[Sample], batch_size: int, progress=None):
    """Greedy answers to the samples' prompts, batched: (texts, throughput)."""
    texts: list[str] = []
    batches = []
    prompt_tokens = generated = 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts, images = zip(*(task.prompt(s, agent.renderer) for s in chunk), strict=True)
        inputs = agent.prompt_inputs(list(prompts), list(images))
        began = time.perf_counter()
        new = agent.generate_ids(inputs)
        batches.append((len(chunk), time.perf_counter() - began))
        prompt_tokens += int(inputs["attention_mask"].sum())
        generated += _generated_tokens(new, agent.renderer.markers)
        texts += agent.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        if progress:
            progress(len(texts), len(samples))
    return texts, Throughput.of(batches, batch_size, prompt_tokens, generated)


def _generated_tokens(new: torch.Tensor, markers) -> int:
    """Tokens generated per row up to and including its end token (rows that finished early are padded)."""
    count = 0
    for row in new.tolist():
        count += next((i + 1 for i, t in enumerate(row) if t == markers.turn_end), len(row))
    return count


def choice_batch(renderer: Renderer, task: Task, chunk: list[Sample]):
    """Every sample's prompt followed by each of its choices' answers: rows of input ids and answer-only
    labels."""
    rows = []
    for sample in chunk:
        prompt, _ = task.prompt(sample, renderer)
        for text in task.choices(sample, renderer):
            answer = {"role": "assistant", "content": [{"type": "text", "text": text}]}
            ids = renderer.processor.tokenizer(render_text(renderer.processor, [*prompt, answer]))[
                "input_ids"
            ]
            # only this answer counts: earlier assistant turns of a chat row are the same for every choice
            start, stop = assistant_spans(ids, renderer.markers)[-1]
            only_last = [IGNORE_INDEX] * start + ids[start:stop] + [IGNORE_INDEX] * (len(ids) - stop)
            rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(only_last)})
    for row in rows:
        row["attention_mask"] = torch.ones_like(row["input_ids"])
    return pad_batch(rows, renderer.markers.pad)


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


def likelihood_answers(agent: Agent, task: Task, samples: list[Sample], batch_size: int, progress=None):
    """The most likely choice per sample, as the task reads it: (answers, throughput). `batch_size` counts
    samples (each brings one row per choice)."""
    answers, batches = [], []
    prompt_tokens = 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = choice_batch(agent.renderer, task, chunk)
        device_batch = {k: v.to(agent.model.device) for k, v in batch.items()}
        began = time.perf_counter()
        scores = answer_log_likelihoods(agent.model, device_batch).cpu().tolist()
        batches.append((len(chunk), time.perf_counter() - began))
        prompt_tokens += int(batch["attention_mask"].sum())
        for sample in chunk:
            n = len(task.choices(sample, agent.renderer))
            answers.append(task.choose(scores[:n], sample, agent.renderer))
            scores = scores[n:]
        if progress:
            progress(len(answers), len(samples))
    return answers, Throughput.of(batches, batch_size, prompt_tokens, 0)


def eval_loss(model, renderer: Renderer, samples: list[Sample], batch_size: int) -> float:
    """Mean loss per answer token, over all samples (the same number the Trainer's eval reports)."""
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            batch = renderer.collate(samples[start : start + batch_size])
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            count = int((labels[:, 1:] != IGNORE_INDEX).sum())
            # the output layer at answer positions only, as in training (pigg.train.loss)
            loss, _ = causal_lm_loss(model, {**batch, "use_cache": False}, labels)
            total += float(loss) * count
            tokens += count
    model.train(was_training)
    return total / tokens


def evaluate(
    agent: Agent,
    task: Task,
    samples: list[Sample],
    batch_size: int,
    mode: str = "generate",
    loss: bool = False,
    embedder=None,
) -> ModelResult:
    """A loaded model's scored answers to `samples` by one mode. `embedder`: (model, tokenizer) that embeds
    answers and references for a task that `embeds` (default: the agent's own model, as seed 003)."""
    renderer = agent.renderer
    with progress_bar(len(samples), f"{mode} {agent.label}", unit=task.unit) as advance:
        started = time.perf_counter()
        if mode == "generate":
            texts, throughput = generate_answers(agent, task, samples, batch_size, advance)
            answers = [task.parse(text, s, renderer) for text, s in zip(texts, samples, strict=True)]
        else:
            answers, throughput = likelihood_answers(agent, task, samples, batch_size, advance)
        seconds = time.perf_counter() - started
    scores = [task.score(a, s, renderer) for a, s in zip(answers, samples, strict=True)]
    if task.embeds:
        from pigg.evaluation.similarity import similarity_scores

        model, tokenizer = embedder or (agent.model, agent.processor.tokenizer)
        answered, references = [s.answer for s in scores], [s.reference for s in scores]
        for score, distance in zip(
            scores, similarity_scores(model, tokenizer, answered, references, batch_size), strict=True
        ):
            score.similarity = distance
    result = ModelResult(
        agent.label, scores, task.aggregate(scores), mode, seconds=seconds, throughput=throughput
    )
    if loss:
        result.loss = eval_loss(agent.model, renderer, samples, batch_size)
    return result


def click_samples(agent: Agent, samples: list[Sample], batch_size: int = 8, progress=None) -> list[Click]:
    """Batched greedy answers to the samples' prompts, read as clicks in screenshot pixels."""
    task = GroundingTask()  # reading a click needs no setting
    texts, _ = generate_answers(agent, task, samples, batch_size, progress)
    return [task.parse(text, s, agent.renderer) for text, s in zip(texts, samples, strict=True)]
