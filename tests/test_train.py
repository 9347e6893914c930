"""Short tiny runs: the loss really falls, frozen parts stay bit-identical, checkpoints rotate, and the run
folder loads on its own."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pigg.models.families import QWEN3_VL
from pigg.models.loading import load_model, load_processor
from pigg.train.run import train


def _base_weights(tiny_model):
    return load_file(str(tiny_model / "model.safetensors"))


def test_full_finetuning_learns_keeps_vision_frozen_and_rotates_checkpoints(
    tiny_config, tiny_model, tmp_path
):
    cfg = tiny_config(
        "train.method=full", "train.max_steps=6", "train.save_steps=2", "train.save_total_limit=2"
    )
    result = train(cfg)
    summary = result.summary
    assert summary["steps"] == 6
    losses = [loss for _, loss in summary["losses"]]
    assert losses[-1] < losses[0] - 1.0, losses  # from ~6.8 (ln of the vocabulary) down by more than a nat

    base = _base_weights(tiny_model)
    trained = {n: p.detach() for n, p in result.model.named_parameters()}
    vision = [n for n in trained if n.startswith("model.visual.")]
    llm = [n for n in trained if n.startswith("model.language_model.") or n == "lm_head.weight"]
    assert vision and llm
    assert all(torch.equal(trained[n], base[n]) for n in vision)  # bit-identical
    assert all(not torch.equal(trained[n], base[n]) for n in llm if "norm" not in n)

    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert (run / "checkpoint-6" / "model.safetensors").exists()
    assert not list(run.rglob("*.bin")) or all(p.name == "training_args.bin" for p in run.rglob("*.bin"))

    # the run folder stands alone: weights, processor, template, resolved config, summary
    for name in (
        "model.safetensors",
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    ):
        assert (run / name).exists(), name
    assert "method: full" in (run / "pigg_config.yaml").read_text()
    assert json.loads((run / "pigg_run.json").read_text())["base_model"] == str(tiny_model)
    reloaded = load_model(str(run), torch.float32)
    assert torch.equal(reloaded.lm_head.weight, result.model.lm_head.weight)
    assert load_processor(str(run), QWEN3_VL).chat_template

    log = next((tmp_path / "logs").glob("run_full_*.log")).read_text()
    assert "No GPU found: training on CPU in float32" in log
    assert "step 6/6 | loss" in log and "samples/s" in log and "ETA" in log


def test_lora_trains_only_adapters_on_the_language_model(tiny_config, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_model.parent)  # the model named relatively: its adapter must load from anywhere
    overrides = (
        "train.method=lora",
        "train.max_steps=3",
        "train.learning_rate=1e-2",
        f"model.name={tiny_model.name}",
    )
    result = train(tiny_config(*overrides))
    model = result.model
    base = _base_weights(tiny_model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model.layers." in n for n in trainable)
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param.detach(), base[key]), name  # every base weight, vision included, untouched
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: non-zero means it learned

    run = tmp_path / "run"
    adapter = load_file(str(run / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k and "visual" not in k for k in adapter)
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model.resolve())
    assert (run / "processor_config.json").exists() and (run / "chat_template.jinja").exists()
    log = next((tmp_path / "logs").glob("run_lora_*.log")).read_text()
    assert "trainable params: " in log


def test_tiny_qwen2_5_vl_trains_through_the_same_path(tiny_config, tmp_path):
    from pigg.models.tiny import build_tiny

    folder = build_tiny("qwen2.5-vl", tmp_path / "tiny-qwen2.5-vl")
    result = train(tiny_config(f"model.name={folder}", "train.method=lora", "train.learning_rate=1e-2"))
    assert result.summary["family"] == "qwen2_5_vl"
    losses = [loss for _, loss in result.summary["losses"]]
    assert losses[-1] < losses[0]
    trainable = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trainable and not any("visual" in n for n in trainable)


def test_eval_split_by_held_out_fraction(tiny_config):
    import pytest

    from pigg.errors import ConfigError
    from pigg.train.build import prepare_data

    data = prepare_data(tiny_config("train.eval=true", "data.eval_fraction=0.25"))
    again = prepare_data(tiny_config("train.eval=true", "data.eval_fraction=0.25"))
    assert (len(data.train), len(data.eval)) == (18, 6)
    assert {s.source for s in data.train}.isdisjoint(s.source for s in data.eval)
    assert [s.source for s in data.eval] == [s.source for s in again.eval]  # seeded
    with pytest.raises(ConfigError, match="needs data.eval_path, data.test_users or data.eval_fraction"):
        prepare_data(tiny_config("train.eval=true"))


def test_length_grouping_uses_validation_lengths(tiny_config, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from pigg.train.build import build_run, prepare_data

    cfg = tiny_config("train.group_by_length=true")
    data = prepare_data(cfg)
    _, trainer = build_run(cfg, data, tmp_path / "scratch", torch.float32, False)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert len(sampler.lengths) == len(data.train) and min(sampler.lengths) > 50
    assert sorted(iter(sampler)) == list(range(len(data.train)))  # every sample once per epoch


def test_image_only_processor_pickles_into_a_fresh_process(tiny_model, tmp_path):
    """Dataloader workers under spawn/forkserver (macOS, Python 3.14) and bench runs get the processor by
    pickle: the image-only class must be found by name in a process that never built it."""
    import pickle
    import subprocess
    import sys

    from pigg.models.families import QWEN3_VL

    processor = load_processor(str(tiny_model), QWEN3_VL)
    assert type(processor).__name__.endswith("ImageOnly")  # no torchvision here: the image-only class
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(processor))
    code = (
        "import pickle, sys; p = pickle.loads(open(sys.argv[1], 'rb').read()); "
        "print(type(p).__name__, p.tokenizer('click ok')['input_ids'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "p.pkl")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == type(processor).__name__
    assert str(processor.tokenizer("click ok")["input_ids"]) in out.stdout


def test_liger_kernels_only_where_they_run(monkeypatch):
    import importlib.util

    from pigg.errors import ConfigError
    from pigg.train.build import liger_enabled

    installed = {"value": True}
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (object() if installed["value"] else None) if name == "liger_kernel" else real(name, *a)
        ),
    )
    assert liger_enabled("auto", cuda=True) is True
    assert liger_enabled("auto", cuda=False) is False  # Triton has no CPU backend
    assert liger_enabled(False, cuda=True) is False
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        liger_enabled(True, cuda=False)
    installed["value"] = False
    assert liger_enabled("auto", cuda=True) is False
    with pytest.raises(ConfigError, match="not installed"):
        liger_enabled(True, cuda=True)


def test_random_weight_copy_keeps_the_architecture_and_processor(tiny_model, tmp_path):
    from pigg.errors import ConfigError
    from pigg.models.tiny import build_random

    out = build_random(str(tiny_model), tmp_path / "random", dtype="bfloat16", seed=1)
    original = load_model(str(tiny_model), torch.float32).state_dict()
    copy = load_model(str(out), None)
    weights = copy.state_dict()
    assert weights.keys() == original.keys()
    assert all(weights[k].shape == original[k].shape for k in original)
    assert next(copy.parameters()).dtype == torch.bfloat16
    linear = "model.language_model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(weights[linear].float(), original[linear])  # new random values
    assert (
        load_processor(str(out), QWEN3_VL).tokenizer("click ok")["input_ids"]
        == (load_processor(str(tiny_model), QWEN3_VL).tokenizer("click ok")["input_ids"])
    )
    with pytest.raises(ConfigError, match="not empty"):
        build_random(str(tiny_model), out)
