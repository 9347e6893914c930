"""Packing: several multimodal samples in one row, each with its own positions and no attention across
samples, gives the unpacked batch's loss; a packed training run logs its padding."""

import pytest
import torch

from conftest import caught, difference, within
from pigg.data.packing import STATS_KEY, TrainingCollator, first_fit, rope_index_of
from pigg.errors import DataError
from pigg.models.loading import load_model
from pigg.train.build import prepare_data
from pigg.train.run import train


def test_first_fit_keeps_rows_under_capacity():
    assert first_fit([5, 3, 4, 2], 7) == [[0, 3], [1, 2]]
    assert first_fit([7, 7], 7) == [[0], [1]]
    with pytest.raises(DataError, match="does not fit"):
        first_fit([8], 7)


# A packed batch against the same samples padded, float32 (benchmarks/tolerances.py): loss noise 4.8e-7,
# bug 6.4e-2 (samples attending to each other, in the test); logits noise 6.0e-7, bug 1.1.
PACKED_LOSS_TOL = 1e-4
LOGITS_TOL = 1e-3


@pytest.mark.parametrize("pack_length", [10_000, 300])
def test_packed_batch_has_the_unpacked_loss(tiny_config, pack_length):
    cfg = tiny_config("data.max_length=256")
    data = prepare_data(cfg, check=False)
    model = load_model(cfg.model.name, torch.float32).train()  # the tiny model has no dropout
    samples = data.train[:6]
    plain = TrainingCollator(data.renderer)(samples)
    packed = TrainingCollator(data.renderer, rope_index_of(model), pack_length)(samples)
    real, padded, computed = packed.pop(STATS_KEY).tolist()
    assert plain.pop(STATS_KEY).tolist() == [real, padded, padded]
    rows = packed["input_ids"].shape[0]
    assert rows == (1 if pack_length == 10_000 else 2) and computed < padded  # less padding when packed
    assert packed["position_ids"].shape == (4, rows, packed["input_ids"].shape[1])
    assert "attention_mask" not in packed
    assert int((packed["position_ids"][0] == 0).sum()) >= len(samples)  # positions restart per sample
    with torch.no_grad():
        want = model(**plain)
        got = model(**packed)
    within(f"packing.loss[{pack_length}]", difference(got.loss, want.loss), PACKED_LOSS_TOL)
    # training batches ask for no KV cache (the tiny text_config, like Qwen's, says use_cache: true)
    assert model.config.text_config.use_cache and want.past_key_values is None and got.past_key_values is None
    if rows == 1:  # sample by sample, the packed logits are the unpacked ones: nothing leaks across
        offset = 0
        for i, n in enumerate(plain["attention_mask"].sum(1).tolist()):
            within(
                "packing.logits",
                difference(got.logits[0, offset : offset + n], want.logits[i, :n]),
                LOGITS_TOL,
            )
            offset += n
        # the mutation it must fail on: the packed row with an attention mask, so samples see each other
        with torch.no_grad():
            leaked = model(**packed, attention_mask=torch.ones_like(packed["input_ids"]))
        caught("packing.loss", difference(leaked.loss, want.loss), PACKED_LOSS_TOL)
        caught("packing.logits", difference(leaked.logits, got.logits), LOGITS_TOL)


def test_packed_training_logs_padding_before_and_after(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(
        tiny_config("data.packing=true", "data.pack_length=1024", "train.max_steps=3", "train.method=lora")
    )
    assert len(result.summary["losses"]) == 3
    log = next((tmp_path / "logs").glob("*.log")).read_text()
    assert "pad 0.0% (unpacked " in log
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    unpacked = [e.value for e in events.Scalars("train/padding_fraction_unpacked")]
    assert unpacked and all(v > 0 for v in unpacked)
    assert all(e.value == 0 for e in events.Scalars("train/padding_fraction"))
