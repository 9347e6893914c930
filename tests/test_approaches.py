"""Seed 003's approaches in one process: QLoRA on CPU, refusals that come before any weight loads, the
model-parallel layer placement on the real 8B config, FSDP's shard units, the vision filler for text-only
batches, the computed memory table and the shipped launch configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import asset, caught, difference, within
from pigg.config import LoraSection, build_config
from pigg.errors import ConfigError
from pigg.models.families import QWEN3_VL
from pigg.models.placement import parse_memory, place_layers, placement_units, shard_unit_classes
from pigg.recipes import RECIPES
from pigg.train.launch import Topology, torchrun_command
from pigg.train.run import train


def _no_weights_may_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the approach was checked")

    monkeypatch.setattr("pigg.models.loading.load_model", refuse)


# ---------------------------------------------------------------- QLoRA


def test_qlora_trains_4bit_llm_linears_only_and_merges_into_the_unquantized_base(
    tiny_config, tmp_path, capsys
):
    from bitsandbytes.nn import Linear4bit

    from pigg.infer import load_weights, resolve_model
    from pigg.publish import merge_run

    result = train(tiny_config("model.quantization=nf4", "train.max_steps=8", "train.learning_rate=5e-3"))
    model = result.model
    quantized = {n for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    llm_linears = {
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".language_model.layers." in n and n.endswith("base_layer")
    }
    assert quantized and quantized == llm_linears  # every LLM linear, and nothing else
    assert not any(".visual." in n or "lm_head" in n for n in quantized)
    summary = result.summary
    assert summary["quantization"] == "nf4" and summary["last_loss"] < summary["first_loss"] - 0.3

    run = Path(summary["log_file"]).parents[1] / "run"
    assert (run / "adapter_model.safetensors").is_file()
    plain = load_weights(resolve_model(str(run)), torch.float32)  # the adapter on the unquantized base
    assert not any(isinstance(m, Linear4bit) for m in plain.modules())

    merged = merge_run(str(run), tmp_path / "merged")
    assert "trained on the nf4-quantized base (QLoRA)" in capsys.readouterr().out
    assert json.loads((merged / "pigg_merge.json").read_text())["adapter_trained_on"] == "nf4"


def test_qlora_needs_lora_on_the_llm(tiny_config):
    with pytest.raises(ConfigError, match="4-bit weights cannot train"):
        tiny_config("model.quantization=nf4", "train.method=full")


# ---------------------------------------------------------------- refused before any weight loads


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("train.method=full", "train.parallel=fsdp"), "would quietly run DDP instead"),
        (("train.method=full", "train.parallel=model"), "splits the layers over GPUs and none is visible"),
    ],
)
def test_an_approach_this_machine_cannot_run_is_refused_before_weights_load(
    tiny_config, monkeypatch, overrides, message
):
    _no_weights_may_load(monkeypatch)
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(*overrides))


def test_model_parallel_refuses_several_processes_and_accelerate_must_match_the_recipe(
    tiny_config, monkeypatch
):
    _no_weights_may_load(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="start it without --nproc"):
        train(tiny_config("train.method=full", "train.parallel=model"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="launched by accelerate with fsdp.*train.parallel=ddp"):
        train(tiny_config())


def test_deepspeed_settings_must_agree():
    base = {"model": {"name": "m"}, "data": {"path": "d"}}
    with pytest.raises(ConfigError, match="set train.parallel=deepspeed"):
        build_config(base, ["train.deepspeed=zero2"])
    with pytest.raises(ConfigError, match="needs train.deepspeed"):
        build_config(base, ["train.parallel=deepspeed"])
    with pytest.raises(ConfigError, match="max_memory_per_gpu applies to train.parallel=model"):
        build_config(base, ["train.max_memory_per_gpu=70GiB"])


# ---------------------------------------------------------------- model parallel placement


@pytest.fixture(scope="module")
def full_8b_units():
    from pigg.models.params import meta_model
    from pigg.models.trainable import apply_method

    model = apply_method(meta_model(str(asset("qwen3-vl-8b-instruct"))), QWEN3_VL, "full", LoraSection())
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    return placement_units(model, QWEN3_VL, element_size=2), names


@pytest.mark.parametrize("devices", [[0, 1], [0, 1, 2, 3], [1, 3]])
def test_model_parallel_map_of_the_8b_is_contiguous_balanced_and_uses_only_the_given_gpus(
    full_8b_units, devices
):
    units, names = full_8b_units
    placement = place_layers(units, devices)
    mapping = placement.device_map
    assert set(mapping.values()) == set(devices)  # every GPU given is used, no other
    assert all(any(n == k or n.startswith(k + ".") for k in mapping) for n in names)  # every tensor placed
    order = [devices.index(mapping[u.name]) for u in units]
    assert order == sorted(order)  # one contiguous stretch per GPU, in forward order
    assert mapping["model.visual"] == devices[0] and mapping["lm_head"] == devices[-1]
    loads = placement.bytes_per_device.values()
    assert max(loads) - min(loads) <= placement.largest_unit  # balanced within one unit
    layers = [u for u in units if u.name.startswith("model.language_model.layers.")]
    assert len(layers) == 36 and all(u.trained_bytes == u.weight_bytes for u in layers)
    assert next(u for u in units if u.name == "model.visual").trained_bytes == 0  # frozen: weights only


def test_a_tied_output_layer_stays_with_the_embeddings_it_shares(full_8b_units):
    from pigg.models.params import meta_model
    from pigg.models.trainable import apply_method

    model = apply_method(meta_model(str(asset("qwen3-vl-4b-instruct"))), QWEN3_VL, "full", LoraSection())
    units = placement_units(model, QWEN3_VL, element_size=2)
    head = next(u for u in units if u.name == "lm_head")
    assert head.tied_to == "model.language_model.embed_tokens" and head.weight_bytes == 0
    mapping = place_layers(units, [0, 1, 2]).device_map
    assert mapping["lm_head"] == mapping["model.language_model.embed_tokens"] == 0
    assert mapping["model.language_model.layers.35"] == 2


def test_model_parallel_refuses_a_gpu_cap_too_small_before_loading(full_8b_units):
    units, _ = full_8b_units
    with pytest.raises(ConfigError, match=r"needs \d+\.\d GiB on GPU 0 .* over its 24\.0 GiB"):
        place_layers(units, [0, 1], {0: parse_memory("24GiB"), 1: parse_memory("24GiB")})
    assert parse_memory("80GB") == 80 * 10**9 and parse_memory("1.5GiB") == int(1.5 * 2**30)


def test_the_placement_covers_every_module_as_from_pretrained_checks_it(tiny_model):
    """transformers refuses a device_map that leaves any weight out: load the tiny model with pigg's map
    (every device mapped to the CPU) and run it."""
    from pigg.models.loading import load_model
    from pigg.models.params import meta_model

    placement = place_layers(placement_units(meta_model(str(tiny_model)), QWEN3_VL), [0, 1])
    model = load_model(str(tiny_model), torch.float32, {name: "cpu" for name in placement.device_map})
    out = model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False)
    assert torch.isfinite(out.logits).all()


def test_fsdp_shards_the_decoder_layer_and_the_vision_block_of_this_model(tiny_model):
    from pigg.models.params import meta_model

    model = meta_model(str(tiny_model))
    classes = shard_unit_classes(model, QWEN3_VL)
    assert classes == [
        type(model.model.language_model.layers[0]).__name__,
        type(model.model.visual.blocks[0]).__name__,
    ]
    assert classes[0] != classes[1]


# ---------------------------------------------------------------- vision filler


# A batch's loss and gradients with and without a filler row, float32: noise (benchmarks/tolerances.py)
# 0 for the loss, 9.7e-8 for a gradient element; bug (one filler token trained, below) 7.3e-3 and 9.9e-2.
FILLER_TOL = 1e-4


def test_a_text_only_batch_gets_a_filler_image_that_changes_no_loss_and_no_gradient(tiny_config, tmp_path):
    from pigg.data.packing import STATS_KEY, TrainingCollator
    from pigg.data.readers import read_samples
    from pigg.data.render import IGNORE_INDEX, pad_batch
    from pigg.models.loading import load_model
    from pigg.train.build import load_renderer

    rows = [
        {"user_id": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"click button {i}"}]},
            {"role": "assistant", "content": [{"type": "text", "text": f"({100 * i}, 500)"}]}]}
        for i in range(1, 4)
    ]  # fmt: skip
    data = tmp_path / "text.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tiny_config(f"data.path={data}", "data.train_users=1")
    _, _, renderer = load_renderer(cfg)
    samples = read_samples(str(data), [1]).samples
    batch = TrainingCollator(renderer)(samples)
    encoded = [renderer.encode(s) for s in samples]
    plain = pad_batch(encoded, renderer.markers.pad)
    assert "pixel_values" in batch and "pixel_values" not in plain
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"][3] == IGNORE_INDEX).all()
    assert batch[STATS_KEY][0] == sum(len(e["input_ids"]) for e in encoded)  # the filler is no real token

    model = load_model(str(cfg.model.name), torch.float32)
    filler = {k: v for k, v in batch.items() if k != STATS_KEY}
    # the mutation the comparisons must fail on: one token of the filler row trained (its last, as itself)
    mutated = filler | {"labels": filler["labels"].clone()}
    mutated["labels"][3, -1] = filler["input_ids"][3, -1]
    losses, grads = [], []
    for inputs in (plain, filler, mutated):
        model.zero_grad()
        loss = model(**{**inputs, "use_cache": False}).loss
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    within("filler.loss", abs(losses[0] - losses[1]), FILLER_TOL)
    caught("filler.loss", abs(losses[0] - losses[2]), FILLER_TOL)
    vision = [n for n in grads[1] if n.startswith("model.visual.")]
    assert vision and not any(n.startswith("model.visual.") for n in grads[0])  # the tower ran only with it
    assert all(grads[1][n].abs().max() == 0 for n in vision)  # and learned nothing from it
    within("filler.grads", difference({n: grads[1][n] for n in grads[0]}, grads[0]), FILLER_TOL)
    caught("filler.grads", difference({n: grads[2][n] for n in grads[0]}, grads[0]), FILLER_TOL)


# ---------------------------------------------------------------- memory per approach


def test_memory_table_of_the_8b_follows_its_byte_model():
    from pigg.models.memory import approach_memory
    from pigg.models.params import parameter_report

    cfg = build_config(
        {"model": {"name": str(asset("qwen3-vl-8b-instruct"))}, "data": {"path": "d"}}, ["train.method=lora"]
    )
    report = approach_memory(cfg)
    total, trained, adapter = report["parameters"], report["trained_full"], report["trained_lora"]
    assert total == 8_767_123_696 and adapter == parameter_report(cfg)["trainable"]
    rows = {(r["approach"], r["gpus"]): r for r in report["rows"]}
    assert rows[("LoRA", 1)]["total"] == 2 * total + 16 * adapter
    assert rows[("full", 1)]["total"] == 2 * total + 6 * trained
    # pytest.approx's default tolerance (relative 1e-6) on float64 arithmetic of hand-written numbers: no CPU
    # changes IEEE sums and quotients of a few terms (noise ~1e-16); a wrong formula moves them by more than 1e-2.
    assert rows[("full + ZeRO-3", 8)]["total"] == pytest.approx((2 * total + 14 * trained) / 8)
    assert rows[("full + ZeRO-2", 4)]["weights"] == 2 * total  # weights stay whole under ZeRO-2
    assert rows[("LoRA + DDP", 4)]["total"] == rows[("LoRA", 1)]["total"]  # a whole copy per GPU
    assert rows[("QLoRA", 1)]["weights"] < 0.45 * rows[("LoRA", 1)]["weights"]
    full = rows[("full", 1)]["total"]
    for k in (2, 4):  # model parallel and FSDP: about 1/k of full each, never less
        assert full / k <= rows[("full + MP", k)]["total"] < full / k + 2**30 * 5
        assert full / k <= rows[("full + FSDP", k)]["total"] < full / k + 2**30 * 2


def test_params_approaches_prints_the_table(tiny_config, capsys):
    from typer.testing import CliRunner

    from pigg.cli import app

    path = Path(tiny_config().train.output_dir).parent / "cfg.yaml"
    path.write_text(tiny_config().to_yaml())
    result = CliRunner().invoke(app, ["params", str(path), "--approaches"])
    assert result.exit_code == 0, result.stdout
    assert "| full + ZeRO-3 | 8 |" in result.stdout and "activations excluded" in result.stdout


# ---------------------------------------------------------------- launch


def test_torchrun_command_for_one_node_and_for_several():
    one = torchrun_command(Topology(nproc=2), ["train", "c.yaml"])
    assert one[1:4] == ["-m", "pigg.train.launch", "--standalone"] and one[-4:] == [
        "-m",
        "pigg",
        "train",
        "c.yaml",
    ]
    two = torchrun_command(Topology(4, 2, 1, "10.0.0.1", 29501), ["train", "c.yaml"])
    assert "--nnodes=2" in two and "--node_rank=1" in two and "--master_addr=10.0.0.1" in two
    assert "--master_port=29501" in two and "--nproc_per_node=4" in two
    with pytest.raises(ConfigError, match="--master-addr"):
        Topology(1, 2, 0).check()
    with pytest.raises(ConfigError, match="--node-rank 2"):
        Topology(1, 2, 2, "h").check()


def test_every_shipped_launch_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for path in sorted((RECIPES / "accelerate").glob("*.yaml")):
        config = load_config_from_file(str(path))
        kinds[path.stem] = config.distributed_type.value
        if config.deepspeed_config:
            ds = RECIPES / config.deepspeed_config["deepspeed_config_file"]
            stage = int(path.stem[-1])
            assert json.loads(ds.read_text())["zero_optimization"]["stage"] == stage
    assert kinds == {
        "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED",
    }  # fmt: skip
    for name in ("zero2", "zero3"):
        ds = json.loads((RECIPES / "deepspeed" / f"{name}.json").read_text())
        # the batch and clipping are the recipe's, filled in by the Trainer from pigg's config
        assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_clipping"] == "auto"
    zero3 = json.loads((RECIPES / "deepspeed" / "zero3.json").read_text())["zero_optimization"]
    assert zero3["stage3_gather_16bit_weights_on_model_save"] is True  # the final model is one folder
    for recipe in (RECIPES / "seed003").glob("*.yaml"):
        assert yaml.safe_load(recipe.read_text())["train"]["parallel"] in ("ddp", "fsdp", "model")
