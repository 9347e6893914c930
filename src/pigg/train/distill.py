"""Distillation against the model without its adapter: personalization that keeps what the global model
knows.

A user's adapter trains on their own samples plus replayed samples of the global run's data
(`personalize.replay_ratio`). Cross-entropy on a replayed sample pulls the adapted model towards the
*dataset's* answer; a KL term pulls it towards the *global model's own* answer distribution on that screen,
which is what "forgetting nothing" means (the global model's mistakes included). The teacher costs no
memory: it is the same peft model run with its adapter disabled, under no_grad, once per step.

loss = CE(every trained token) + distill * KL(global || adapted) over the replayed samples' trained tokens,
both divided by the step's trained tokens (as the stock loss is).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from pigg.data.packing import TrainingCollator
from pigg.data.sample import Sample
from pigg.train.loss import next_token_targets
from pigg.train.trainer import PiggTrainer

REPLAY_KEY = "replay_rows"  # batch key: which rows are replayed samples (popped before the forward)
REPLAY_META = "replay"


def mark_replayed(samples: list[Sample]) -> list[Sample]:
    """Copies of `samples` flagged as replayed (the pool's own samples stay untouched)."""
    return [dataclasses.replace(s, meta={**s.meta, REPLAY_META: True}) for s in samples]


class ReplayCollator(TrainingCollator):
    """The training collator plus a per-row flag: is this row a replayed sample. Rows are the samples in
    order (no packing); a vision filler row, when the collator adds one, is not replayed."""

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        batch = super().__call__(samples)
        flags = [bool(s.meta.get(REPLAY_META)) for s in samples]
        flags += [False] * (batch["input_ids"].shape[0] - len(flags))
        batch[REPLAY_KEY] = torch.tensor(flags)
        return batch


class DistillTrainer(PiggTrainer):
    """PiggTrainer whose loss adds `distill` x KL(teacher || student) on the replayed rows, the teacher
    being the same peft model with its adapter disabled."""

    def __init__(self, *args, distill: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.distill = distill

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        replay = inputs.pop(REPLAY_KEY)
        labels = inputs.pop("labels")
        targets = next_token_targets(labels)
        keep = targets != -100
        outputs = model(**inputs, logits_to_keep=keep)
        student = outputs.logits.float()
        count = keep.sum() if num_items_in_batch is None else num_items_in_batch
        if torch.is_tensor(count):
            count = count.to(student.device)
        loss = F.cross_entropy(student, targets[keep], reduction="sum") / count
        rows = replay.to(keep.device)[:, None].expand_as(keep)[keep]  # per kept position: replayed?
        if self.distill > 0 and bool(rows.any()):
            with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
                teacher = model(**inputs, logits_to_keep=keep).logits.float()
            kl = F.kl_div(
                F.log_softmax(student[rows], dim=-1),
                F.log_softmax(teacher[rows], dim=-1),
                log_target=True,
                reduction="sum",
            )
            loss = loss + self.distill * kl / count
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as PiggTrainer's
        return (loss, outputs) if return_outputs else loss
