"""Reinforcement learning with the task's rewards (train.stage: grpo, on TRL's GRPOTrainer): the rewards on
hand cases, bad settings refused before any model loads, a run that raises its reward and its greedy
accuracy, an exact resume, a run folder the other commands load, and the same under two processes."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from pigg.cli import app
from pigg.config import build_config
from pigg.data.sample import Sample, Target
from pigg.tasks.classify import ClassifyTask, Label
from pigg.tasks.describe import DescribeTask
from pigg.tasks.grounding import Click, GroundingTask, gaussian_reward
from pigg.train.build import load_renderer
from pigg.train.control import EXIT_RESUMABLE, checkpoints
from pigg.train.run import train
from test_run_control import SignalDuring

runner = CliRunner()
BOX = Target(point=(200.0, 230.0), box=(100.0, 200.0, 300.0, 260.0))
SIZE = (1000, 750)  # diagonal 1250 px: radius 0.05 is 62.5 px


def grounding_rewards(tiny_model, radius=0.05):
    cfg = build_config({"model": {"name": str(tiny_model)}, "data": {"path": "d"}}, [f"eval.radius={radius}"])
    return GroundingTask(cfg).rewards(), cfg


def click_at(point):
    return Click("answer", point, SIZE)


def test_click_rewards_on_hand_cases(tiny_model):
    rewards, _ = grounding_rewards(tiny_model)
    sample = Sample(messages=[], target=BOX)
    inside, gaussian, fmt = rewards["inside"], rewards["gaussian"], rewards["format"]
    e = math.exp
    # at the centre, on the left edge (edges count as inside), one pixel outside, unparsable
    for point, hit, bump in [
        ((200, 230), 1, 1.0),
        ((100, 230), 1, e(-0.5)),
        ((99, 230), 0, e(-0.5 * 1.01**2)),
    ]:
        assert inside(click_at(point), sample, None) == hit
        assert gaussian(click_at(point), sample, None) == pytest.approx(bump, rel=1e-12)
        assert fmt(click_at(point), sample, None) == 1.0
    # a corner: the spread is half the box's width (100 px) and height (30 px) on each axis
    assert gaussian(click_at((300, 260)), sample, None) == pytest.approx(e(-0.5 * 2), rel=1e-12)
    unread = click_at(None)
    assert inside(unread, sample, None) == gaussian(unread, sample, None) == fmt(unread, sample, None) == 0.0
    # no box, a point target: right within the radius (62.5 px), the Gaussian spread by it
    point_only = Sample(messages=[], target=Target(point=(500.0, 375.0)))
    assert inside(click_at((500, 437.5)), point_only, None) == 1
    assert inside(click_at((500, 438)), point_only, None) == 0
    assert gaussian(click_at((500, 437.5)), point_only, None) == pytest.approx(e(-0.5), rel=1e-12)
    assert gaussian_reward((500, 375), Target(point=(500.0, 375.0)), SIZE) == 1.0


def test_click_rewards_read_answers_in_the_model_s_coordinates(tiny_model, tmp_path):
    """Through the task's parse, as a GRPO run calls them: Qwen3-VL answers in 0-1000 of the screenshot."""
    Image.new("RGB", SIZE, "white").save(tmp_path / "screen.png")
    rewards, cfg = grounding_rewards(tiny_model)
    _, _, renderer = load_renderer(cfg)
    task = GroundingTask(cfg)
    sample = Sample(messages=[{"role": "user", "content": [{"type": "image", "image": "screen.png"}]}],
                    target=BOX, base_dir=tmp_path)  # fmt: skip
    assert task.parse("(200, 307)", sample, renderer).point == pytest.approx((200, 230.25))
    reward = {
        name: f(task.parse("(200, 307)", sample, renderer), sample, renderer) for name, f in rewards.items()
    }
    assert reward["inside"] == reward["format"] == 1.0 and reward["gaussian"] > 0.99
    missed = {
        name: f(task.parse("click somewhere", sample, renderer), sample, renderer)
        for name, f in rewards.items()
    }
    assert missed == {"inside": 0.0, "gaussian": 0.0, "format": 0.0}


def test_label_and_text_rewards():
    cfg = build_config(
        {
            "task": "classify",
            "model": {"name": "m"},
            "data": {"path": "d"},
            "classify": {"labels": ["A", "B"]},
        },
        [],
    )
    labels = ClassifyTask(cfg).rewards()
    sample = Sample(messages=[], meta={"label": "A"})
    assert labels["label"](Label("A", "A"), sample, None) == 1.0
    assert labels["label"](Label("B", "B"), sample, None) == 0.0
    assert labels["format"](Label("maybe", None), sample, None) == 0.0
    text = DescribeTask(cfg).rewards()

    class Reference:  # the describe task reads the reference as training renders it
        def messages(self, _):
            return [{"role": "assistant", "content": [{"type": "text", "text": "a red login button"}]}]

    assert text["token_f1"]("red login button", sample, Reference()) == 1.0  # articles do not count
    assert text["token_f1"]("blue button", sample, Reference()) == pytest.approx(
        2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)
    )
    assert text["format"]("", sample, Reference()) == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["rl.num_generations=1"], "rl.num_generations=1: GRPO compares several answers"),
        (["train.batch_size=6"], "must be a multiple of rl.num_generations (4)"),
        (["train.eval=true"], "a GRPO run logs its rewards"),
        (["rl.rewards={inside: 1, clicks: 1}"], "rl.rewards names clicks"),
        (["train.stage=sft", "personalize.stage=grpo", "personalize.batch_size=6"],
         "personalize.batch_size (6) must be a multiple of rl.num_generations (4)"),
        (["train.stage=sft", "personalize.stage=grpo", "personalize.distill=0.5"], "distillation is a term"),
        (["train.stage=sft", "personalize.stage=grpo", "rl.beta=0.04"], "set rl.beta=0"),
    ],
)  # fmt: skip
def test_bad_rl_settings_are_refused_before_any_model_loads(tmp_path, synth_data, overrides, message):
    # the model does not exist: reaching its loading would say so instead
    config = tmp_path / "grpo.yaml"
    raw = {"model": {"name": str(tmp_path / "no-model")}, "data": {"path": str(synth_data)},
           "train": {"stage": "grpo", "batch_size": 8, "output_dir": str(tmp_path / "run")}}  # fmt: skip
    config.write_text(json.dumps(raw))
    result = runner.invoke(app, ["train", str(config), *overrides])
    assert result.exit_code != 0
    assert message in str(result.exception or result.output), result.output


def grpo_config(trained_run, fixed_data, tmp_path, *overrides):
    """GRPO with LoRA from the global SFT run, on 16 screens of the held-out users 1-2."""
    raw = {
        "model": {"name": str(trained_run), "init_from": str(trained_run)},
        "data": {"path": str(fixed_data), "train_users": "1-2", "test_users": "1-2", "max_samples": 16,
                 "max_length": 256},
        "train": {"stage": "grpo", "method": "lora", "output_dir": str(tmp_path / "grpo"),
                  "log_dir": str(tmp_path / "logs"), "learning_rate": 2e-3, "batch_size": 32, "max_steps": 24,
                  "logging_steps": 1, "save_steps": 1000, "gradient_checkpointing": False},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "rl": {"num_generations": 8, "max_completion_length": 10, "rewards": {"inside": 1.0}},
        "eval": {"batch_size": 16},
    }  # fmt: skip
    return build_config(raw, list(overrides))


def test_grpo_raises_the_click_reward_and_greedy_accuracy_and_its_run_loads(
    trained_run, fixed_data, tmp_path
):
    cfg = grpo_config(trained_run, fixed_data, tmp_path)
    summary = train(cfg).summary
    assert summary["stage"] == "grpo" and summary["steps"] == 24
    rewards = [r for _, r in summary["rewards"]]
    # measured (seeds 42, 1, 2): the first 8 steps' mean 0.52 / 0.61 / 0.55, the last 8's 0.76 / 0.81 / 0.74
    assert sum(rewards[-8:]) / 8 > sum(rewards[:8]) / 8 + 0.05
    run = tmp_path / "grpo"
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(trained_run)  # loading merges the SFT run first
    events = list((run / "tensorboard").rglob("events.out.tfevents*"))
    assert events and b"rewards/inside/mean" in events[0].read_bytes()
    assert b"generation_share" in events[0].read_bytes()  # pigg's: the time spent generating

    # the same 16 screens, greedy, before and after: 12/16 and 15/16 measured
    accuracy = {}
    for name, model in (("sft", trained_run), ("grpo", run)):
        args = [
            "eval",
            "--model",
            str(model),
            "--users",
            "1-2",
            "--max-samples",
            "16",
            "--out",
            str(tmp_path / name),
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        accuracy[name] = json.loads((tmp_path / name / "eval.json").read_text())["models"]
    (sft,), (grpo,) = accuracy["sft"].values(), accuracy["grpo"].values()
    assert grpo["overall"]["hits"] > sft["overall"]["hits"]


def test_a_stopped_grpo_run_resumes_to_the_straight_run(trained_run, fixed_data, tmp_path):
    common = ("train.max_steps=4", "train.batch_size=16", "train.save_steps=2", "train.learning_rate=5e-3")
    straight = train(
        grpo_config(trained_run, fixed_data, tmp_path, *common, f"train.output_dir={tmp_path / 'a'}")
    )
    cfg = grpo_config(trained_run, fixed_data, tmp_path, *common, f"train.output_dir={tmp_path / 'b'}")
    first = train(cfg, callbacks=[SignalDuring(3)])
    assert first.stopped and first.summary["steps"] == 3  # a stop signal in step 3: it ends and is saved
    second = train(cfg, resume=True)
    assert second.summary["status"] == "complete" and second.summary["steps"] == 4
    assert second.summary["resumed_from"] == str(tmp_path / "b" / "checkpoint-3")
    rewards = dict(first.summary["rewards"]) | dict(second.summary["rewards"])
    assert [rewards[s] for s in range(1, 5)] == [r for _, r in straight.summary["rewards"]]
    a, b = (load_file(str(tmp_path / run / "adapter_model.safetensors")) for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


def test_per_user_grpo_trains_each_user_s_adapter_from_rewards(trained_run, tmp_path, monkeypatch):
    """personalize.stage=grpo: each held-out user's LoRA adapter trains by GRPO on that user's own screens
    (replay as in SFT); the global weights stay bit-identical and the adapters are pure LoRA."""
    import shutil

    from pigg.personalize import personalize

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("users"))
    before = load_file(str(run / "model.safetensors"))
    settings = ["personalize.stage=grpo", "personalize.batch_size=16", "personalize.max_steps=4",
                "personalize.learning_rate=1e-3", "personalize.replay_ratio=1", "personalize.budgets=[2]",
                "rl.num_generations=8", "rl.max_completion_length=10"]  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the run named relatively, as in `pigg personalize runs/NAME`
    table = json.loads(personalize(Path("run"), settings).read_text())
    assert table["settings"]["personalize"]["stage"] == "grpo"
    for user in ("1", "2"):
        weights = load_file(str(run / "users" / user / "adapter_model.safetensors"))
        b = [w for k, w in weights.items() if ".lora_B." in k]
        assert b and any(w.abs().sum() > 0 for w in b)  # lora_B starts at zero: the rewards moved it
        assert table["costs"][user]["train_seconds"] > 0 and table["costs"][user]["peak_memory_bytes"] > 0
        adapter = json.loads((run / "users" / user / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(run.resolve())  # absolute: loads from any folder
    assert {"train_seconds", "peak_memory_bytes", "habit", "generic"} <= set(table["curve"]["2"])
    after = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_grpo_demo_runs_sft_then_grpo_and_writes_its_summary(tmp_path):
    """`pigg demo grpo` in miniature (the full demo's numbers are in docs/rl.md): every stage runs and the
    summary holds what the issue names, the reward curve beside it."""
    sizes = ["--per-user", "8", "--held-out-screens", "12", "--steps", "10", "--rl-steps", "3"]
    result = runner.invoke(app, ["demo", "grpo", "--out", str(tmp_path / "demo"), *sizes, "--seed", "1"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "demo" / "demo_grpo_summary.json"
    assert result.output.strip().splitlines()[-1] == str(path)
    summary = json.loads(path.read_text())
    assert {"zero_shot", "sft", "grpo", "reward_first", "reward_last"} <= set(summary)
    assert all(0 <= summary[k] <= 1 for k in ("zero_shot", "sft", "grpo"))
    assert [s for s, _ in summary["rewards"]] == [1, 2, 3] and summary["training"]["sft"]["steps"] == 10
    assert (tmp_path / "demo" / "reward_curve.png").stat().st_size > 10_000
    run = json.loads((tmp_path / "demo" / "runs" / "grpo" / "adapter_config.json").read_text())
    assert run["base_model_name_or_path"] == str(tmp_path / "demo" / "runs" / "sft")


def _two_ranks(cfg, *more: str, **popen):
    """`pigg train CONFIG --nproc 2` on the config written beside its run folder."""
    from test_distributed import _pigg, _write

    path = _write(cfg, Path(cfg.train.output_dir).with_suffix(".yaml"))
    return _pigg("train", str(path), "--nproc", "2", *more, **popen)


@pytest.mark.distributed
def test_two_grpo_ranks_answer_the_prompts_of_one_process_with_twice_the_batch(
    trained_run, fixed_data, tmp_path
):
    """Under `--nproc 2` each rank samples half of a step's answers and the group advantages and logged
    rewards are over all of them. Sampling near-greedy makes a step's answers a function of its prompts alone
    (each rank draws from its own seed): the rewards of 2 ranks x 16 answers must then be those of one process
    x 32, step by step, which fails if a rank draws other screens, repeats its neighbour's or logs its own."""
    # temperature 1e-4: the greedy answers' smallest margin between the top two logits, over the 16 screens,
    # is 0.26 (measured), 2600 after scaling, so no draw leaves the argmax; float noise is ~1e-6
    common = ("train.max_steps=4", "rl.temperature=1e-4")  # 4 steps of 4 screens: each of the 16 once
    single = train(grpo_config(trained_run, fixed_data, tmp_path, *common, "train.batch_size=32",
                               f"train.output_dir={tmp_path / 'single'}")).summary  # fmt: skip
    cfg = grpo_config(trained_run, fixed_data, tmp_path, *common, "train.batch_size=16",
                      f"train.output_dir={tmp_path / 'ranks'}")  # fmt: skip
    process = _two_ranks(cfg, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    ranks = json.loads((tmp_path / "ranks" / "pigg_run.json").read_text())
    assert ranks["world_size"] == 2 and ranks["stage"] == "grpo"
    assert len({r for _, r in single["rewards"]}) > 1  # the steps' screens differ in how many are hit
    assert ranks["rewards"] == [list(step) for step in single["rewards"]]


@pytest.mark.distributed
def test_a_stopped_two_rank_grpo_run_resumes_to_the_straight_run(trained_run, fixed_data, tmp_path):
    """SIGTERM to the whole job mid-run: both ranks stop at one step and save it (each rank's sampling RNG
    with it); resumed, every step's reward and the adapter are bit-identical to the straight 2-rank run."""
    from test_distributed import _adapter, _sigterm_at_step_2, _summary

    def config(name: str):
        return grpo_config(trained_run, fixed_data, tmp_path, "train.max_steps=6", "train.batch_size=16",
                           "train.learning_rate=5e-3", f"train.output_dir={tmp_path / name}")  # fmt: skip

    straight = _two_ranks(config("straight"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out
    cfg = config("stopped")
    process = _two_ranks(cfg, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    out = _sigterm_at_step_2(process)
    assert process.returncode == EXIT_RESUMABLE and "Traceback" not in out, out
    stopped = _summary(tmp_path / "stopped")
    assert stopped["status"] == "stopped" and 2 <= stopped["steps"] < 6
    (saved,) = checkpoints(tmp_path / "stopped")
    assert sorted(p.name for p in saved.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    resumed = _two_ranks(cfg, "--resume", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    after = _summary(tmp_path / "stopped")
    assert after["status"] == "complete" and after["resumed_from"] == str(saved)
    rewards = dict(stopped["rewards"]) | dict(after["rewards"])
    assert [rewards[s] for s in range(1, 7)] == [r for _, r in _summary(tmp_path / "straight")["rewards"]]
    a, b = _adapter(tmp_path / "stopped"), _adapter(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# logits, float32, the GRPO run through pigg's loading or merged against PEFT's two unmerged adapters: noise
# 4.8e-6 measured; the smallest bug, the SFT adapter lost: 3.9 (the GRPO one lost: 5.4)
CHAIN_TOL = 1e-3


def test_grpo_from_a_lora_sft_run_loads_and_merges_as_both_adapters(
    trained_run, fixed_data, tmp_path, monkeypatch
):
    """The shipped path (`global_grpo` after `global_lora`): GRPO's new adapter trains on the SFT run with
    its LoRA merged, and names that run, so every command loads base + SFT adapter + GRPO adapter, from any
    folder though the recipe names the run relatively; `pigg merge` bakes both in. The oracle is PEFT with
    both adapters active and nothing merged."""
    from peft import PeftModel

    from conftest import caught, difference, within
    from pigg.infer import load_weights, resolve_model
    from pigg.models.loading import load_model
    from pigg.publish import merge_run
    from pigg.train.build import prepare_data

    sft = grpo_config(trained_run, fixed_data, tmp_path, "train.stage=sft", "train.max_steps=10",
                      "train.batch_size=8", "train.learning_rate=2e-3", "model.init_from=null",
                      f"train.output_dir={tmp_path / 'sft'}")  # fmt: skip
    train(sft)
    # model.name stays the base model, as in the recipe; init_from names the LoRA run
    cfg = grpo_config(trained_run, fixed_data, tmp_path, "train.max_steps=3", "train.batch_size=16",
                      "train.learning_rate=5e-3", "model.init_from=sft",
                      f"train.output_dir={tmp_path / 'grpo'}")  # fmt: skip
    monkeypatch.chdir(tmp_path)  # init_from=sft: relative to the folder the run starts in, as in the recipe
    train(cfg)
    monkeypatch.chdir(fixed_data)  # elsewhere
    grpo = str(tmp_path / "grpo")
    assert resolve_model(grpo).adapters == (str((tmp_path / "sft").resolve()), grpo)

    data = prepare_data(cfg, check=False)
    batch = data.renderer.collate(data.train[:2])
    batch.pop("labels")
    both = PeftModel.from_pretrained(load_model(str(trained_run), torch.float32), str(tmp_path / "sft"),
                                     adapter_name="sft")  # fmt: skip
    both.load_adapter(str(tmp_path / "grpo"), adapter_name="grpo")
    both.base_model.set_adapter(["sft", "grpo"])  # LoRA adds both deltas to the frozen weights
    loaded = load_weights(resolve_model(str(tmp_path / "grpo")), torch.float32)
    merged = load_model(str(merge_run(str(tmp_path / "grpo"), tmp_path / "merged")), torch.float32)
    with torch.no_grad():
        want = both.eval()(**batch).logits
        got = {"loaded": loaded.eval()(**batch).logits, "merged": merged.eval()(**batch).logits}
        with both.disable_adapter():
            base = both(**batch).logits
        both.base_model.set_adapter("sft")
        sft_only = both(**batch).logits
        both.base_model.set_adapter("grpo")
        grpo_only = both(**batch).logits
    for name, logits in got.items():
        within(f"rl.chain.{name}", difference(logits, want), CHAIN_TOL)
    caught("rl.chain.without_grpo", difference(sft_only, want), CHAIN_TOL)
    caught("rl.chain.without_sft", difference(grpo_only, want), CHAIN_TOL)
    caught("rl.chain.neither", difference(base, want), CHAIN_TOL)
