"""Personalization's distillation term (pigg.train.distill): KL to the model without its adapter, on the
replayed rows only, added to the cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conftest import caught, difference, within
from pigg.data.packing import STATS_KEY
from pigg.data.readers import read_samples
from pigg.data.render import IGNORE_INDEX
from pigg.models.loading import load_model
from pigg.train.build import load_renderer
from pigg.train.distill import REPLAY_KEY, DistillTrainer, ReplayCollator, mark_replayed
from pigg.train.loss import causal_lm_loss
from pigg.train.trainer import build_trainer


def _peft(path, family):
    from peft import LoraConfig, get_peft_model

    from pigg.models.trainable import llm_linear_pattern

    torch.manual_seed(0)
    model = load_model(str(path), torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=llm_linear_pattern(model, family))
    return get_peft_model(model, config)


# Relative difference of two float32 losses computed two ways: noise 2.6e-8 (benchmarks/tolerances.py; 0
# without the KL term), bugs 1.8e-3 (the last trained token dropped) and 4.0e-3 (KL on every row).
DISTILL_TOL = 1e-5


def test_distillation_is_kl_to_the_global_model_on_replayed_rows_only(tiny_config, synth_data, tmp_path):
    cfg = tiny_config()
    family, _, renderer = load_renderer(cfg)
    samples = read_samples(str(synth_data), [1, 2]).samples[:4]
    rows = samples[:2] + mark_replayed(samples[2:])
    assert not any(s.meta.get("replay") for s in samples)  # the pool's own samples stay unmarked
    batch = ReplayCollator(renderer)(rows)
    assert batch[REPLAY_KEY].tolist() == [False, False, True, True]
    inputs = {k: v for k, v in batch.items() if k != STATS_KEY}
    model = _peft(cfg.model.name, family)
    model.eval()

    def loss_with(weight: float) -> float:
        trainer = build_trainer(
            model, renderer, rows, 4, output_dir=str(tmp_path / "t"), max_steps=1, report_to="none",
            use_cpu=True, collator=ReplayCollator(renderer), trainer_class=DistillTrainer,
            trainer_options={"distill": weight},
        )  # fmt: skip
        with torch.no_grad():
            return float(trainer.compute_loss(model, dict(inputs)))

    plain = {k: v for k, v in inputs.items() if k not in ("labels", REPLAY_KEY)}
    with torch.no_grad():
        cross_entropy, _ = causal_lm_loss(model, plain, inputs["labels"])
    # a fresh adapter (B = 0) is the global model: nothing to distil
    within(
        "distill.fresh_adapter", difference(loss_with(5.0), float(cross_entropy), relative=True), DISTILL_TOL
    )
    # the mutation both comparisons with the plain cross-entropy must fail on: the last trained token left out
    dropped = inputs["labels"].clone()
    for row in dropped:
        row[int((row != IGNORE_INDEX).nonzero().max())] = IGNORE_INDEX
    with torch.no_grad():
        mutated, _ = causal_lm_loss(model, plain, dropped)
    caught(
        "distill.fresh_adapter", difference(float(mutated), float(cross_entropy), relative=True), DISTILL_TOL
    )

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
        student = model(**plain).logits
        with model.disable_adapter():
            teacher = model(**plain).logits
        cross_entropy, _ = causal_lm_loss(model, plain, inputs["labels"])
    targets = F.pad(inputs["labels"], (0, 1), value=IGNORE_INDEX)[:, 1:]
    keep = targets != IGNORE_INDEX
    replayed = keep.clone()
    replayed[:2] = False
    kl = F.kl_div(
        F.log_softmax(student[replayed], -1),
        F.log_softmax(teacher[replayed], -1),
        log_target=True,
        reduction="sum",
    )
    expected = float(cross_entropy) + 3.0 * float(kl) / int(keep.sum())
    assert float(kl) > 1e-3  # the moved adapter really differs from the global model
    within("distill.kl_term", difference(loss_with(3.0), expected, relative=True), DISTILL_TOL)
    within("distill.weight_0", difference(loss_with(0.0), float(cross_entropy), relative=True), DISTILL_TOL)
    # the mutation the KL comparison must fail on: the KL taken over every trained row, not the replayed only
    everywhere = F.kl_div(
        F.log_softmax(student[keep], -1), F.log_softmax(teacher[keep], -1), log_target=True, reduction="sum"
    )
    wrong = float(cross_entropy) + 3.0 * float(everywhere) / int(keep.sum())
    caught("distill.kl_term", difference(loss_with(3.0), wrong, relative=True), DISTILL_TOL)
