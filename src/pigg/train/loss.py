"""The causal-LM loss where the output layer costs: logits only at trained positions.

A GUI answer trains ~10 tokens of a ~1,000-token screenshot sample, and Qwen's output layer maps each
position to 151,936 logits: the stock forward computes (and keeps for backward) all of them, ~0.6 GB of
float32 per sample on the 8B. Here the model's own forward gets a boolean `logits_to_keep` mask, so
transformers gathers the hidden states of the trained positions before `lm_head` and only those become
logits; the cross-entropy over them, summed and divided as the stock loss divides (by the trained tokens of
the whole step, `num_items_in_batch`), is the same number with the same gradients.

With many trained positions (long free-text answers, full-sequence training) even those logits are large:
`chunked` keeps the output layer out of the forward (it returns the gathered hidden states) and computes
the cross-entropy a chunk of positions at a time, each chunk's logits recomputed in the backward pass
instead of kept, so no more than one chunk of logits exists at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pigg.data.render import IGNORE_INDEX

# `auto` switches from `labelled` to `chunked` when a micro-batch's trained logits would exceed this many
# elements (1 GiB in float32, and as much again for their gradient). Measured on CPU (docs/benchmarks.md,
# ~1,000 trained tokens a micro-batch, 152k vocabulary): chunked was 27% slower than labelled and saved
# 1.0 GB of 2.7, and at 2**26 `auto` fell to 0.88x the seed recipe there; chunking is for memory only.
AUTO_CHUNK_ELEMENTS = 2**28
# logits in one chunk: 256 MiB of float32
CHUNK_ELEMENTS = 2**26


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The token each position predicts: labels shifted left by one, the last position predicting nothing
    (what transformers' ForCausalLMLoss does)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def output_layer(model: nn.Module) -> nn.Linear:
    """The linear layer that makes logits, as the forward runs it: peft's trained copy of lm_head when
    lm_head is trained in full next to LoRA (modules_to_save), the model's own otherwise."""
    head = model.get_output_embeddings()
    saved = getattr(head, "modules_to_save", None)
    if saved is not None:
        head = saved[head.active_adapters[0]]
    return head


@contextlib.contextmanager
def _hidden_states_out(head: nn.Linear) -> Iterator[None]:
    """For the duration, `head` returns its input: the forward's `logits` are the gathered hidden states."""
    head.forward = lambda hidden: hidden  # an instance attribute shadows nn.Linear.forward
    try:
        yield
    finally:
        del head.forward


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def chunked_cross_entropy(hidden, head: nn.Linear, targets, rows: int) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` against `targets`, `rows` positions at a time; each chunk's
    logits are recomputed in backward (activation checkpointing) rather than stored."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], rows):
        part = slice(start, start + rows)
        total = total + checkpoint(
            _chunk_loss, hidden[part], head.weight, head.bias, targets[part], use_reentrant=False
        )
    return total


def causal_lm_loss(
    model: nn.Module,
    inputs: dict,
    labels: torch.Tensor,
    num_items_in_batch=None,
    mode: str = "labelled",
    chunk_rows: int | None = None,
):
    """(loss, model outputs) of `model(**inputs)` for next-token `labels`, the output layer run only at
    trained positions. `mode`: labelled | chunked. Divided by `num_items_in_batch` when given (the Trainer
    passes the step's trained tokens across accumulation and ranks), else by this batch's trained tokens:
    exactly the stock loss's two cases."""
    targets = next_token_targets(labels)
    keep = targets != IGNORE_INDEX
    if mode == "chunked":
        head = output_layer(model)
        with _hidden_states_out(head):
            outputs = model(**inputs, logits_to_keep=keep)
        rows = chunk_rows or max(1, CHUNK_ELEMENTS // head.out_features)
        summed = chunked_cross_entropy(outputs.logits, head, targets[keep], rows)
    elif mode == "labelled":
        outputs = model(**inputs, logits_to_keep=keep)
        summed = F.cross_entropy(outputs.logits.float(), targets[keep], reduction="sum")
    else:
        raise ValueError(f"unknown loss mode {mode!r}")
    count = keep.sum() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(count):
        count = count.to(summed.device)
    return summed / count, outputs


def resolve_mode(setting: str, liger: bool, sharded: bool, trained_positions: int, vocab: int) -> str:
    """What `train.logits` means for one batch: `all` (the model's own loss over every position, which
    Liger's fused kernel replaces when on), `labelled` or `chunked`. Chunking reads lm_head's weight outside
    its module's forward, which FSDP and ZeRO-3 shards would not allow: never there."""
    if setting == "all" or (setting == "auto" and liger):
        return "all"
    if setting == "chunked" or (
        setting == "auto" and not sharded and trained_positions * vocab > AUTO_CHUNK_ELEMENTS
    ):
        return "chunked"
    return "labelled"
