"""Predict, evaluate and personalize with a tiny model trained here for a few seconds.

The data uses the "fixed" layout (each label on its own cell) so that the instruction alone says where
to click: a random-weight tiny model learns that in seconds, and a model that did not learn it cannot
score above chance. Habit samples ("the usual") differ per user, for personalization.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import caught, difference, within
from pigg.cli import app
from pigg.data.readers import read_samples
from pigg.data.render import Renderer, prompt_messages
from pigg.evaluation.answers import click_samples, eval_loss
from pigg.evaluation.run import run_eval
from pigg.infer import Agent, load_weights, resolve_model
from pigg.models.coords import format_point, to_model
from pigg.models.families import QWEN2_5_VL
from pigg.predict import click

CHANCE = 1 / 9  # nine cells


def test_eval_compare_base_vs_trained_writes_report(trained_run, tmp_path):
    path = run_eval(["base", str(trained_run)], out=tmp_path / "eval", loss=True)
    report = json.loads(path.read_text())
    base, trained = report["models"]["base"], report["models"]["run"]
    samples = trained["overall"]["samples"]
    assert samples == base["overall"]["samples"] == 80  # held-out users 1-2, 40 each
    assert set(trained["per_user"]) == {"1", "2"}
    # The trained model reads the instruction; the random base cannot click right beyond chance.
    assert trained["overall"]["accuracy"] > 2 * CHANCE
    assert trained["per_kind"]["generic"]["accuracy"] > 3 * CHANCE
    assert base["overall"]["accuracy"] <= CHANCE
    assert trained["overall"]["parse_failures"] == 0
    assert trained["eval_loss"] < base["eval_loss"]
    for name in (
        "eval.md",
        "accuracy_per_user.png",
        "clicks_base.png",
        "clicks_run.png",
        "predictions_base.jsonl",
    ):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    lines = (tmp_path / "eval" / "predictions_base.jsonl").read_text().splitlines()
    assert len(lines) == samples
    unparsed = [json.loads(line) for line in lines if json.loads(line)["point"] is None]
    assert len(unparsed) == base["overall"]["parse_failures"]  # every parse failure is listed


def test_batched_answers_equal_one_at_a_time(trained_run, fixed_data):
    agent = Agent.load(resolve_model(str(trained_run)))
    samples = read_samples(fixed_data, [1]).samples[:6]
    batched = click_samples(agent, samples, batch_size=6)
    single = click_samples(agent, samples, batch_size=1)
    assert [c.raw for c in batched] == [c.raw for c in single]


def test_eval_through_the_image_cache_clicks_the_same_screenshot_pixels(trained_run, fixed_data, tmp_path):
    from pigg.data.sample import image_size

    samples = read_samples(fixed_data, [2]).samples[:8]
    plain = click_samples(Agent.load(resolve_model(str(trained_run))), samples, batch_size=4)
    cached_agent = Agent.load(resolve_model(str(trained_run)), image_cache=tmp_path / "cache")
    filling = click_samples(cached_agent, samples, batch_size=4)
    reading = click_samples(cached_agent, samples, batch_size=4)  # every image now comes from the cache
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(samples)
    originals = [image_size(s.image_refs()[-1], s.base_dir) for s in samples]
    resized = [cached_agent.renderer.load_image(s.image_refs()[-1], s.base_dir).size for s in samples]
    assert resized != originals  # the cache holds smaller images, yet clicks are read in the originals
    for clicks in (filling, reading):
        assert [c.raw for c in clicks] == [c.raw for c in plain]
        assert [c.point for c in clicks] == [c.point for c in plain]
        assert [c.size for c in clicks] == originals


# Relative difference of one float32 loss over 5 samples taken in other batches: noise 1.6e-7
# (benchmarks/tolerances.py), bug 4.7e-2 (the batches' means averaged, in the test).
EVAL_LOSS_TOL = 1e-4


def test_eval_loss_is_token_weighted_and_batch_size_invariant(trained_run, fixed_data):
    agent = Agent.load(resolve_model(str(trained_run)))
    samples = read_samples(fixed_data, [1]).samples[:5]
    whole = agent.model(**agent.renderer.collate(samples)).loss.item()
    for batch_size in (5, 2):
        got = eval_loss(agent.model, agent.renderer, samples, batch_size=batch_size)
        within(f"eval_loss[batch {batch_size}]", difference(got, whole, relative=True), EVAL_LOSS_TOL)
    # the mutation it must fail on: the mean of the batches' means (batches of 2, 2 and 1 weighted alike)
    with torch.no_grad():
        means = [agent.model(**agent.renderer.collate(samples[i : i + 2])).loss.item() for i in (0, 2, 4)]
    caught("eval_loss", difference(sum(means) / 3, whole, relative=True), EVAL_LOSS_TOL)


def test_personalize_swaps_adapters_on_one_global_model(trained_run, fixed_data, monkeypatch):
    import pigg.personalize as module

    loads = {"weights": 0, "agents": 0}
    real_weights, real_agent = module.load_weights, module.Agent.load

    def counting_weights(*args, **kwargs):
        loads["weights"] += 1
        return real_weights(*args, **kwargs)

    def counting_agent(*args, **kwargs):
        loads["agents"] += 1
        return real_agent(*args, **kwargs)

    monkeypatch.setattr(module, "load_weights", counting_weights)
    monkeypatch.setattr(module.Agent, "load", counting_agent)
    global_file = trained_run / "model.safetensors"
    before = load_file(global_file)

    table = json.loads(module.personalize(trained_run).read_text())
    # One load of the base (zero-shot) and one of the global model, for two users.
    assert loads == {"weights": 1, "agents": 1}
    assert set(table["users"]) == {"1", "2"}
    habit = table["per_kind"]["habit"]
    assert habit["personalized"] > habit["global"]  # each user's "usual" is learned by their adapter
    for user in ("1", "2"):
        folder = trained_run / "users" / user
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["modules_to_save"] is None  # pure LoRA: servable by multi-LoRA servers
        assert config["base_model_name_or_path"] == str(trained_run)
        keys = load_file(folder / "adapter_model.safetensors").keys()
        assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert (trained_run / "users" / "personalization.md").exists()
    assert (trained_run / "users" / "eval" / "accuracy_per_user.png").exists()
    after = load_file(global_file)
    assert all(torch.equal(before[k], after[k]) for k in before)

    # Swapping adapters on one loaded model: the users' habit prompts get different answers, and with
    # the adapter off the model answers exactly as the global model does.
    from peft import PeftModel

    habits = {  # each user's own phrase for their favourite app
        u: next(s for s in read_samples(fixed_data, [u]).samples if s.meta["kind"] == "habit").messages[0][
            "content"
        ][1]["text"]
        for u in (1, 2)
    }
    screen = read_samples(fixed_data, [1]).samples[0]
    base = load_weights(resolve_model(str(trained_run)))
    plain_agent = Agent(base, *_processor_renderer(trained_run))
    expected_global = [click(plain_agent, _image(screen), habits[u]).raw for u in (1, 2)]
    model = PeftModel.from_pretrained(base, str(trained_run / "users" / "1"), adapter_name="1")
    model.load_adapter(str(trained_run / "users" / "2"), adapter_name="2")
    agent = Agent(model, *_processor_renderer(trained_run))
    answers = {}
    for user in (1, 2):
        model.set_adapter(str(user))
        answers[user] = click(agent, _image(screen), habits[user]).raw
    assert answers[1] != answers[2]
    with model.disable_adapter():
        assert [click(agent, _image(screen), habits[u]).raw for u in (1, 2)] == expected_global


def _processor_renderer(run):
    from pigg.models.loading import load_processor, resolve_family

    family = resolve_family(str(run))
    processor = load_processor(str(run), family)
    return processor, Renderer(processor, family)


def _image(sample):
    from pigg.data.sample import load_image

    return load_image(sample.image_refs()[-1], sample.base_dir)


def test_predict_cli_prints_the_click_and_draws_it(trained_run, fixed_data, tmp_path, capsys):
    sample = read_samples(fixed_data, [1]).samples[0]
    image = fixed_data / sample.image_refs()[0]
    prompt = prompt_messages(sample.messages)[-1]["content"][1]["text"]
    out = tmp_path / "click.png"
    with pytest.raises(SystemExit) as exit_info:
        app(
            [
                "predict",
                "--model",
                str(trained_run),
                "--image",
                str(image),
                "--prompt",
                prompt,
                "--out",
                str(out),
            ]
        )
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("answer: ")
    assert printed[1].startswith("click: (") and "px on a" in printed[1]
    assert printed[-1] == str(out)
    from PIL import Image

    with Image.open(out) as drawn, Image.open(image) as original:
        assert drawn.size == original.size


def test_bench_eval_reports_batched_against_one_at_a_time(trained_run, tmp_path):
    from typer.testing import CliRunner

    args = ["bench-eval", "--model", str(trained_run), "--max-samples", "8", "--repeat", "2"]
    result = CliRunner().invoke(app, [*args, "--batch-sizes", "1,4", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b" / "bench_eval.json").read_text())
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "b" / "bench_eval.json")
    assert report["data"]["samples"] == 8 and report["data"]["users"] == "1-2"  # the run's test users
    assert report["settings"]["baseline"] == 1 and set(report["batch_sizes"]) == {"1", "4"}
    for size, figures in report["batch_sizes"].items():
        assert len(figures["runs"]) == 2 and figures["screens_per_second"] > 0, size
        assert figures["image_tokens_per_second"] > figures["text_tokens_per_second"] > 0
        assert figures["answer_tokens_per_second"] > 0 and figures["peak_memory"] > 0
        # fp32 greedy answers do not depend on the batch: the same answers, the same accuracy
        assert figures["agreement_with_baseline"] == 1.0
        assert figures["accuracy"] == report["batch_sizes"]["1"]["accuracy"]
    assert report["batch_sizes"]["1"]["ratio_to_baseline"] == 1.0
    assert report["batch_sizes"]["1"]["accuracy"] > 2 * CHANCE  # the trained run, really evaluated
    assert "| 4 |" in (tmp_path / "b" / "bench_eval.md").read_text()

    bad = CliRunner().invoke(app, [*args, "--batch-sizes", "1,x"])
    assert bad.exit_code != 0 and "--batch-sizes: '1,x'" in str(bad.exception)


def test_predict_user_without_adapter_names_the_fix(trained_run):
    from pigg.errors import ConfigError

    with pytest.raises(ConfigError, match="--user 7: no personal adapter"):
        resolve_model(str(trained_run), user=7)


def test_qwen2_5_vl_answers_are_rendered_in_resized_pixels(synth_data, tmp_path):
    from pigg.data.sample import image_size
    from pigg.models.loading import load_processor
    from pigg.models.tiny import build_tiny

    folder = build_tiny("qwen2.5-vl", tmp_path / "tiny25")
    processor = load_processor(str(folder), QWEN2_5_VL)
    sample = read_samples(synth_data, [1]).samples[0]
    rendered = Renderer(processor, QWEN2_5_VL).messages(sample)[-1]["content"][0]["text"]
    size = image_size(sample.image_refs()[0], sample.base_dir)
    assert rendered == format_point(
        to_model(sample.target.point, size, QWEN2_5_VL, processor.image_processor)
    )
    assert rendered != sample.answer()  # the stored text is Qwen3-VL's 0-1000 form


def test_personalize_replays_global_samples_measures_costs_and_draws_the_curve(
    trained_run, tmp_path, monkeypatch
):
    """Issue 18: replay comes from the global run's own users (never the personalized ones), the budgets
    train fresh adapters on that many own samples with the test screens unchanged, and each user's cost
    (adapter size, seconds, memory, switch time) is reported."""
    import shutil

    import pigg.personalize as module
    from pigg.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("users"))
    seen: list[tuple[int, list]] = []
    real_train = module.train_user_adapter

    def recording(model, renderer, samples, p, seed, grpo=None):
        seen.append((len(samples), sorted({s.user_id for s in samples})))
        return real_train(model, renderer, samples, p, seed, grpo)

    monkeypatch.setattr(module, "train_user_adapter", recording)
    overrides = ["personalize.replay_ratio=1", "personalize.max_steps=3", "personalize.budgets=[4]"]
    table = json.loads(module.personalize(run, overrides).read_text())

    adapt = {u: table["users"][u]["adapt_samples"] for u in ("1", "2")}
    # each user: adapt + as many replayed (one pass covers the 3 steps of 8); the budget of 4 + 4 replayed
    # is a pass of 8, so 3 passes, each with replayed samples of its own; replay only from users 3-4
    assert min(adapt.values()) >= 12
    assert [n for n, _ in seen] == [2 * adapt["1"], 2 * adapt["2"], 24, 24]
    for (_, users), user in zip(seen, [1, 2, 1, 2], strict=True):
        assert user in users and set(users) - {user} <= {3, 4} and len(users) > 1
    costs = table["costs"]
    assert all(costs[u]["adapter_bytes"] > 10_000 and costs[u]["train_seconds"] > 0 for u in ("1", "2"))
    assert costs["2"]["load_ms"] > 0 and costs["2"]["activate_ms"] >= 0
    curve = table["curve"]
    assert set(curve) == {"4", "full"} and curve["full"]["samples"] == max(adapt.values())
    assert set(curve["4"]) >= {"samples", "all", "habit", "generic"}
    assert (run / "users" / "data_efficiency.png").stat().st_size > 10_000
    assert isinstance(table["forgetting"], dict)
    assert "| own samples |" in (run / "users" / "personalization.md").read_text()

    with pytest.raises(ConfigError, match=r"user\(s\) \[3\] are in the global run's training data"):
        module.personalize(run, ["personalize.users=3"])


def test_a_users_adapt_and_test_screens_never_overlap(fixed_data):
    from pigg.personalize import first_samples, split_user

    samples = read_samples(fixed_data, [1]).samples
    split = split_user(1, samples, 0.5, seed=0)
    adapt, test = {s.source for s in split.adapt}, {s.source for s in split.test}
    assert not adapt & test and adapt | test == {s.source for s in samples}
    assert (
        {s.meta["kind"] for s in split.adapt} == {s.meta["kind"] for s in split.test} == {"habit", "generic"}
    )
    assert [s.source for s in split_user(1, samples, 0.5, seed=0).adapt] == [s.source for s in split.adapt]
    few = first_samples(split.adapt, 3)  # kinds taken in turn: a small budget still holds a habit
    assert len(few) == 3 and {s.meta["kind"] for s in few} == {"habit", "generic"}


def test_replay_never_teaches_other_users_answers_to_the_users_own_words(fixed_data):
    """Users 3-4's "my usual one please" means their own favourite: replayed for user 2 (who says it too)
    it would teach user 2 another user's answer. `replay_conflicts: skip` leaves exactly those out."""
    from pigg.config import PersonalizeSection
    from pigg.personalize import replay_for, split_user

    split = split_user(2, read_samples(fixed_data, [2]).samples, 0.5, seed=0)
    pool = read_samples(fixed_data, [3, 4]).samples
    own = {s.instruction() for s in split.adapt}
    conflicting = [s for s in pool if s.instruction() in own]
    assert conflicting and any(s.meta["kind"] == "habit" for s in conflicting)  # the test can fail
    rest = len(pool) - len(conflicting)
    skip = replay_for(split, pool, PersonalizeSection(), seed=0, count=rest)  # all the pool can give
    assert len({s.source for s in skip}) == rest
    assert not {s.instruction() for s in skip} & own and all(s.meta["replay"] for s in skip)
    keep = replay_for(split, pool, PersonalizeSection(replay_conflicts="keep"), seed=0, count=len(pool))
    assert len({s.source for s in keep}) == len(pool) and {s.instruction() for s in keep} & own
    assert pool[0].instruction() == " ".join(pool[0].instruction().split()).lower()


def test_a_users_fresh_adapter_depends_on_the_seed_alone(trained_run):
    """User 2's adapter starts the same whether or not user 1's was made (and trained) before it."""
    from pigg.config import PersonalizeSection
    from pigg.infer import load_weights, resolve_model
    from pigg.models.families import family_for_model_type
    from pigg.personalize import UserAdapters, user_lora_config

    def initial_lora(first: bool) -> dict:
        model = load_weights(resolve_model(str(trained_run)))
        family = family_for_model_type(model.config.model_type)
        adapters = UserAdapters(model, user_lora_config(model, family, PersonalizeSection()))
        if first:
            adapters.fresh("1", seed=0)
            torch.rand(1000)  # what training user 1 would draw
        peft = adapters.fresh("2", seed=0)
        return {k: v.clone() for k, v in peft.state_dict().items() if "lora_A" in k}

    alone, after = initial_lora(first=False), initial_lora(first=True)
    assert alone and alone.keys() == after.keys()
    assert all(torch.equal(alone[k], after[k]) for k in alone)


def test_replay_per_pass_gives_every_pass_its_own_global_samples(fixed_data):
    from collections import Counter

    from pigg.config import PersonalizeSection
    from pigg.personalize import adaptation_samples, split_user

    split = split_user(2, read_samples(fixed_data, [2]).samples, 0.25, seed=0)
    pool = read_samples(fixed_data, [3, 4]).samples
    n = len(split.adapt)
    settings = dict(replay_ratio=1, max_steps=3 * n // 4, batch_size=4)  # 3n samples: 2 passes of 2n
    fresh = adaptation_samples(split, pool, PersonalizeSection(**settings, replay_draw="per_pass"), seed=0)
    own = Counter(s.source for s in fresh if not s.meta.get("replay"))
    replayed = [s.source for s in fresh if s.meta.get("replay")]
    assert set(own.values()) == {2} and set(own) == {s.source for s in split.adapt}
    assert len(replayed) == 2 * n == len(set(replayed))  # every pass its own, all distinct
    assert len(fresh) >= settings["max_steps"] * settings["batch_size"]
    once = adaptation_samples(split, pool, PersonalizeSection(**settings, replay_draw="once"), seed=0)
    assert len(once) == 2 * n and sum(bool(s.meta.get("replay")) for s in once) == n
