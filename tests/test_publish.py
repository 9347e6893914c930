"""Merge a LoRA run into full weights (same logits, sharded, loadable on its own) and push's dry run and
missing-token error."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import caught, difference, within
from pigg.errors import ConfigError
from pigg.infer import resolve_model
from pigg.models.loading import load_model, load_processor
from pigg.publish import merge_run, push_folder
from pigg.train.build import prepare_data
from pigg.train.run import train


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model, synth_data):
    from pigg.config import build_config

    root = tmp_path_factory.mktemp("lora_run")
    cfg = build_config(
        {
            "model": {"name": str(tiny_model)},
            "data": {"path": str(synth_data), "train_users": "1-3", "max_length": 256},
            "train": {
                "output_dir": str(root / "run"),
                "log_dir": str(root / "logs"),
                "method": "lora",
                "learning_rate": 2e-2,  # large: the adapter must move the logits visibly
                "batch_size": 4,
                "grad_accum": 1,
                "max_steps": 3,
                "save_steps": 2,
                "gradient_checkpointing": False,
            },
        }
    )
    train(cfg)
    return root / "run", cfg


# logits, float32: noise 1.3e-6 (benchmarks/tolerances.py), bug 1.9 (the adapter lost, in the test)
MERGE_TOL = 1e-3


def test_merged_model_gives_the_adapter_models_logits(lora_run, tmp_path):
    from peft import PeftModel

    run, cfg = lora_run
    out = merge_run(str(run), tmp_path / "merged", max_shard_size="2MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / s).exists() for s in shards)  # sharded safetensors
    assert not list(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    for name in (
        "config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "pigg_config.yaml",
        "pigg_merge.json",
    ):
        assert (out / name).exists(), name

    data = prepare_data(cfg, check=False)
    batch = data.renderer.collate(data.train[:2])
    batch.pop("labels")
    base = load_model(cfg.model.name, torch.float32)
    adapted = PeftModel.from_pretrained(base, str(run)).eval()
    merged = load_model(str(out), torch.float32).eval()  # a plain from_pretrained, no peft
    plain = load_model(cfg.model.name, torch.float32).eval()
    with torch.no_grad():
        want = adapted(**batch).logits
        got = merged(**batch).logits
        before = plain(**batch).logits
    # the merged model gives the adapter's logits, and a merge that lost the adapter would not
    within("merge.logits", difference(got, want), MERGE_TOL)
    caught("merge.logits", difference(before, want), MERGE_TOL)
    assert load_processor(str(out), data.family).chat_template
    assert resolve_model(str(out)).adapters == ()  # loads as a plain model


def test_merge_refuses_full_weights_and_non_empty_output(lora_run, tiny_model, tmp_path):
    run, _ = lora_run
    with pytest.raises(ConfigError, match="nothing to merge"):
        merge_run(str(tiny_model), tmp_path / "m")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        merge_run(str(run), tmp_path / "busy")


def test_push_dry_run_lists_files_and_the_model_card_without_checkpoints(lora_run):
    run, _ = lora_run
    assert (run / "checkpoint-2").exists()
    listing = push_folder(run, "someone/tiny-agent", private=True, dry_run=True)
    assert "would upload" in listing and "private repo someone/tiny-agent" in listing
    assert "adapter_model.safetensors" in listing and "README.md (model card, generated)" in listing
    assert "checkpoint-" not in listing.split("--- README.md ---")[0]
    card = listing.split("--- README.md ---")[1]
    assert "library_name: peft" in card and "method: lora" in card and "## Training" in card
    assert not (run / "README.md").exists() or "pigg" not in (run / "README.md").read_text()  # no side effect
    with pytest.raises(ConfigError, match="OWNER/NAME"):
        push_folder(run, "no-owner", dry_run=True)


def test_push_without_a_token_says_so_and_uploads_nothing(lora_run, tmp_path):
    run, _ = lora_run
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "pigg.cli", "push", str(run), "--repo-id", "someone/tiny-agent"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert "no Hugging Face token found: set HF_TOKEN" in done.stderr
    assert "nothing was uploaded" in done.stderr
