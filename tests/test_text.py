"""Seed 004's text path: Qwen2.5/Qwen3 text families, classification readers, text packing, the
classification eval (generation, likelihood, throughput) and the data plots."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import asset, caught, difference, within
from pigg.config import ClassifySection, build_config
from pigg.data.packing import STATS_KEY, TrainingCollator
from pigg.data.readers.tables import read_classification
from pigg.data.render import IGNORE_INDEX, Renderer
from pigg.data.synth.news import LABELS, synthesize_news, vocabulary
from pigg.errors import ConfigError, DataError
from pigg.evaluation.answers import answer_log_likelihoods, choice_batch, evaluate
from pigg.models.families import get_family
from pigg.models.loading import load_model, load_processor
from pigg.tasks.base import Throughput
from pigg.tasks.classify import ClassifyTask

NEWS = ClassifySection(labels=list(LABELS))


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    from pigg.models.tiny import build_tiny

    return build_tiny(
        "qwen2.5", tmp_path_factory.mktemp("tiny_text") / "tiny-qwen2.5", extra_words=vocabulary()
    )


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    folder = tmp_path_factory.mktemp("news")
    return synthesize_news(folder / "train.jsonl", 64, seed=0), synthesize_news(
        folder / "test.jsonl", 16, seed=1
    )


def text_config(model, train, *overrides, test=None):
    raw = {
        "task": "classify",
        "model": {"name": str(model)},
        "data": {"path": str(train), "eval_path": str(test) if test else None, "max_length": 512},
        "classify": {"labels": list(LABELS)},
        "train": {"method": "full", "report_to": [], "num_workers": 0},
    }
    return build_config(raw, list(overrides))


# ---------------------------------------------------------------- families and masking


def test_masking_on_the_real_qwen2_5_template_with_its_default_system_turn():
    from pigg.data.readers.rows import normalise_messages
    from pigg.data.sample import Sample

    folder = asset("qwen2.5-7b-instruct")
    family = get_family("qwen2")
    processor = load_processor(str(folder), family)
    tokenizer = processor.tokenizer
    renderer = Renderer(processor, family)
    answer = '{"category":"Sci/Tech"}'
    messages = [{"role": "user", "content": "Classify: chips"}, {"role": "assistant", "content": answer}]
    encoded = renderer.encode(Sample(normalise_messages(messages)))
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    text = tokenizer.decode(ids)
    # the template adds its own system turn when the conversation has none; it trains nothing
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    trained = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert trained == tokenizer.encode(answer) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    first = labels.index(trained[0])
    assert tokenizer.decode(ids[first - 3 : first]) == "<|im_start|>assistant\n"  # right after the header
    assert all(label == IGNORE_INDEX for label in labels[:first])

    with_system = [{"role": "system", "content": "Sort news."}, *messages]
    ids2 = renderer.encode(Sample(normalise_messages(with_system)))["input_ids"].tolist()
    assert (
        "You are Qwen" not in tokenizer.decode(ids2)
        and tokenizer.decode(ids2).count("<|im_start|>system") == 1
    )


def test_qwen2_5_7b_parameters_on_the_meta_device_match_seed_004():
    from pigg.models.params import parameter_report

    folder = asset("qwen2.5-7b-instruct")
    full = parameter_report(text_config(folder, "x.jsonl"))
    assert (
        full["family"] == "qwen2" and full["total"] == full["trainable"] == 7_615_616_512
    )  # seed 004's figure
    lora = parameter_report(text_config(folder, "x.jsonl", "train.method=lora"))
    llm = next(p for p in lora["parts"] if p["part"] == "llm")
    assert llm["of"] == 28 and llm["lora_modules"] == 28 * 7 and lora["trainable"] < 0.003 * lora["total"]


def test_tiny_text_model_loads_as_a_causal_lm_and_refuses_vision_parts(tiny_text_model, tmp_path):
    from pigg.models.loading import resolve_family
    from pigg.models.tiny import build_tiny
    from pigg.models.trainable import apply_method

    family = resolve_family(str(tiny_text_model))
    assert family.name == "qwen2" and not family.has_vision
    model = load_model(str(tiny_text_model), torch.float32)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    with pytest.raises(ConfigError, match="text-only"):
        apply_method(model, family, "full", NEWS, vision="full")
    assert resolve_family(str(build_tiny("qwen3", tmp_path / "q3", extra_words=vocabulary()))).name == "qwen3"


def test_a_text_model_refuses_samples_with_images(tiny_text_model, synth_data):
    from pigg.data.readers import read_samples
    from pigg.data.validate import validate

    family = get_family("qwen2")
    renderer = Renderer(load_processor(str(tiny_text_model), family), family)
    report = validate(read_samples(synth_data, [1]).samples[:2], renderer, 4096)
    assert not report.samples and "text-only" in report.problems[0].cause


# ---------------------------------------------------------------- readers


def _rows(result):
    return [(s.meta["label"], s.messages[-2]["content"][0]["text"]) for s in result.samples]


def test_csv_with_a_header_and_integer_labels(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text('text,label\n"Stocks rise, again",2\nCup final tonight,1\n')
    result = read_classification(path, NEWS)
    assert not result.problems
    assert _rows(result) == [
        ("Business", "Classify the following text:\n\nStocks rise, again"),
        ("Sports", "Classify the following text:\n\nCup final tonight"),
    ]
    assert result.samples[0].messages[-1]["content"][0]["text"] == '{"category":"Business"}'
    assert result.samples[1].source == f"{path}:3"


def test_the_original_ag_news_csv_without_header_counting_from_one(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        '"3","Wall St. Bears Claw Back","Short-sellers are seeing green."\n"4","NASA","Probe lands"\n'
    )
    spec = ClassifySection(
        labels=list(LABELS),
        columns=["label", "title", "description"],
        text_column=["title", "description"],
        label_base=1,
        system_prompt="You classify news.",
        prompt="Article: {text}",
        answer="bare",
    )
    result = read_classification(path, spec)
    assert not result.problems
    first = result.samples[0]
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant"]
    assert (
        first.messages[1]["content"][0]["text"]
        == "Article: Wall St. Bears Claw Back Short-sellers are seeing green."
    )
    assert first.answer() == "Business" and result.samples[1].meta["label"] == "Sci/Tech"


def test_parquet_and_raw_jsonl_rows(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"text": ["peace talks", "new chip"], "label": ["world", "Sci/Tech"]})
    frame.to_parquet(tmp_path / "news.parquet")
    result = read_classification(tmp_path / "news.parquet", NEWS)
    assert [s.meta["label"] for s in result.samples] == ["World", "Sci/Tech"]  # names read case-insensitively
    assert result.samples[1].source == f"{tmp_path / 'news.parquet'}#1"
    (tmp_path / "raw.jsonl").write_text('{"text": "goal!", "label": 1}\n')
    assert read_classification(tmp_path / "raw.jsonl", NEWS).samples[0].meta["label"] == "Sports"


def test_every_bad_row_is_a_problem_naming_file_and_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,0\nunknown label,Politics\n,1\nout of range,4\nhalf,1.5\n")
    result = read_classification(path, NEWS)
    assert len(result.samples) == 1
    causes = {p.source: p.cause for p in result.problems}
    assert "unknown label 'Politics'" in causes[f"{path}:3"]
    assert "empty text" in causes[f"{path}:4"]
    assert "out of range" in causes[f"{path}:5"] and "0-3" in causes[f"{path}:5"]
    assert "label '1.5'" in causes[f"{path}:6"]

    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(
        '{"text": "ok", "label": 0}\n{"text": "x", "label": 0\n{"body": "no text column", "label": 0}\n'
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Weather"}]}\n'
    )
    result = read_classification(jsonl, NEWS)
    causes = {p.source: p.cause for p in result.problems}
    assert len(result.samples) == 1 and set(causes) == {f"{jsonl}:2", f"{jsonl}:3", f"{jsonl}:4"}
    assert "not valid JSON" in causes[f"{jsonl}:2"]
    assert "no column 'text'" in causes[f"{jsonl}:3"]
    assert "names none of the labels" in causes[f"{jsonl}:4"]

    broken = tmp_path / "broken.csv"
    broken.write_text('text,label\n"unclosed,0\n')
    with pytest.raises(DataError, match=str(broken)):
        read_classification(broken, NEWS)


def test_a_sample_longer_than_max_length_is_reported_not_truncated(tiny_text_model, tmp_path):
    from pigg.train.build import prepare_data

    path = tmp_path / "long.jsonl"
    path.write_text(
        json.dumps({"text": "word " * 30, "label": 0}) + "\n" + json.dumps({"text": "w " * 900, "label": 1})
    )
    cfg = text_config(tiny_text_model, path, "data.max_length=256", f"train.output_dir={tmp_path / 'run'}")
    with pytest.raises(DataError, match=rf"{path}:2: \d+ tokens > data.max_length=256: the answer"):
        prepare_data(cfg)


def test_classify_config_needs_its_section_and_distinct_labels():
    base = {"model": {"name": "m"}, "data": {"path": "d.csv"}}
    with pytest.raises(ConfigError, match="needs a classify section"):
        build_config({**base, "task": "classify"})
    with pytest.raises(ConfigError, match="task is grounding"):
        build_config({**base, "classify": {"labels": ["a", "b"]}})
    with pytest.raises(ConfigError, match="repeat one"):
        build_config({**base, "task": "classify", "classify": {"labels": ["World", "world"]}})


# ---------------------------------------------------------------- packing


# A packed batch against the same samples padded, float32 (benchmarks/tolerances.py): loss noise 1.4e-6,
# bug 1.7e-2 (positions that never restart, in the test); logits noise 5.4e-7, bug 0.91.
PACKED_LOSS_TOL = 1e-4
LOGITS_TOL = 1e-3
# a label's summed log-probability (~12 tokens): noise 3.8e-6, bug 2.9e-2 (read one position late)
LOG_PROB_TOL = 3e-4


@pytest.mark.parametrize("pack_length", [4096, 512])
def test_packed_text_batch_has_the_padded_loss(tiny_text_model, news, pack_length):
    from pigg.train.build import prepare_data

    cfg = text_config(tiny_text_model, news[0])
    data = prepare_data(cfg, check=False)
    model = load_model(str(tiny_text_model), torch.float32).train()
    samples = data.train[:6]
    plain = TrainingCollator(data.renderer)(samples)
    packed = TrainingCollator(data.renderer, None, pack_length)(samples)
    real, padded, computed = packed.pop(STATS_KEY).tolist()
    assert plain.pop(STATS_KEY).tolist() == [real, padded, padded] and computed < padded
    rows, width = packed["input_ids"].shape
    assert packed["position_ids"].shape == (rows, width) and (rows == 1) == (pack_length == 4096)
    assert "attention_mask" not in packed and "mm_token_type_ids" not in packed
    assert int((packed["position_ids"] == 0).sum()) >= len(samples)  # positions restart per sample
    with torch.no_grad():
        want, got = model(**plain), model(**packed)
    within(f"text_packing.loss[{pack_length}]", difference(got.loss, want.loss), PACKED_LOSS_TOL)
    if rows == 1:  # sample by sample, the packed logits are the padded ones: nothing attends across
        offset = 0
        for i, n in enumerate(plain["attention_mask"].sum(1).tolist()):
            part = difference(got.logits[0, offset : offset + n], want.logits[i, :n])
            within("text_packing.logits", part, LOGITS_TOL)
            offset += n
        # the mutation it must fail on: positions that do not restart, so samples see each other
        with torch.no_grad():
            leaked = model(**packed | {"position_ids": torch.arange(width).unsqueeze(0)})
        caught("text_packing.loss", difference(leaked.loss, want.loss), PACKED_LOSS_TOL)
        caught("text_packing.logits", difference(leaked.logits, got.logits), LOGITS_TOL)


# ---------------------------------------------------------------- eval


def test_throughput_fields_from_hand_computed_batches():
    t = Throughput.of([(2, 0.1), (1, 0.3)], batch_size=2, prompt=90, generated=30)
    # pytest.approx's default tolerance (relative 1e-6) on float64 arithmetic of hand-written numbers: no CPU
    # changes IEEE sums and quotients of a few terms (noise ~1e-16); a wrong formula moves them by more than 1e-2.
    assert t.items == 3 and t.seconds == pytest.approx(0.4)
    assert t.items_per_second == 7.5 and t.tokens_per_second == 300.0
    assert t.latency_ms_mean == pytest.approx(166.67) and t.latency_ms_p50 == 100.0
    assert t.latency_ms_p95 == pytest.approx(280.0)


def test_likelihood_scores_each_label_answer_and_picks_the_most_likely(tiny_text_model, news):
    from pigg.infer import Agent, resolve_model

    cfg = text_config(tiny_text_model, news[1])
    agent = Agent.load(resolve_model(str(tiny_text_model)), max_new_tokens=8)
    samples = read_classification(news[1], cfg.classify).samples[:4]
    task = ClassifyTask(cfg)
    generated, likelihood = (evaluate(agent, task, samples, 3, mode) for mode in ("generate", "likelihood"))
    # an untrained model's answers are not labels: counted as parse failures, never guessed
    assert generated.metrics.parse_failures == sum(p.predicted is None for p in generated.scores)
    assert likelihood.metrics.parse_failures == 0 and likelihood.throughput.items == 4
    for p in likelihood.scores:
        assert p.predicted == max(p.log_likelihoods, key=p.log_likelihoods.get)

    # the summed log-likelihood is that of the full forward's log-softmax at the answer's tokens
    batch = choice_batch(agent.renderer, task, samples[:1])
    scores = answer_log_likelihoods(agent.model, batch)
    with torch.no_grad():
        logp = agent.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits.log_softmax(-1)
    for row in range(len(LABELS)):
        positions = (batch["labels"][row] != IGNORE_INDEX).nonzero()[:, 0]
        want = sum(logp[row, k - 1, batch["labels"][row, k]] for k in positions.tolist())
        within("likelihood.log_prob", difference(scores[row], want), LOG_PROB_TOL)
        # the mutation it must fail on: each answer token read one position late
        late = sum(logp[row, k, batch["labels"][row, k]] for k in positions.tolist())
        caught("likelihood.log_prob", difference(late, want), LOG_PROB_TOL)
        assert len(positions) == len(agent.processor.tokenizer.encode(f'{{"category":"{LABELS[row]}"}}')) + 1


# ---------------------------------------------------------------- the commands, end to end


def test_text_lora_run_evaluates_merges_and_plots_from_the_cli(tiny_text_model, news, tmp_path):
    """LoRA on the text model through `pigg train`, then `pigg eval --mode both`, `pigg merge` and
    `pigg data stats`: the classification report's files and fields, a merged model that answers as
    the adapter did, and the data plots."""
    import yaml
    from typer.testing import CliRunner

    from pigg.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    config = tmp_path / "text.yaml"
    cfg = text_config(
        tiny_text_model, news[0], "train.method=lora", f"train.output_dir={run}", "train.max_steps=4",
        "train.batch_size=8", "train.learning_rate=1e-3", f"train.log_dir={tmp_path / 'logs'}",
        "data.packing=true", "train.eval=true", "train.eval_steps=4", test=news[1],
    )  # fmt: skip
    config.write_text(cfg.to_yaml())
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "pigg_run.json").read_text())
    assert summary["family"] == "qwen2" and summary["method"] == "lora" and summary["steps"] == 4
    assert [step for step, _ in summary["eval_losses"]] == [4]  # on data.eval_path
    assert (run / "adapter_config.json").exists() and (run / "tokenizer_config.json").exists()

    result = runner.invoke(app, ["eval", "--compare", f"base,{run}", "--mode", "both", "--max-samples", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval" / "classification.json").read_text())
    assert set(report["results"]) == {"base", "base (likelihood)", "run", "run (likelihood)"}
    tuned = report["results"]["run"]
    assert tuned["score"]["total"] == 8 and len(tuned["score"]["confusion"]) == 4
    assert set(tuned["throughput"]) >= {
        "items_per_second",
        "latency_ms_p50",
        "latency_ms_p95",
        "tokens_per_second",
    }
    predictions = (run / "eval" / tuned["predictions"]).read_text().splitlines()
    assert len(predictions) == 8 and set(json.loads(predictions[0])) >= {"source", "gold", "predicted", "raw"}
    assert (run / "eval" / "confusion.png").stat().st_size > 10_000
    assert "| accuracy |" in (run / "eval" / "classification.md").read_text()

    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(run), "--out", str(merged)])
    assert result.exit_code == 0, result.output
    from pigg.infer import Agent, resolve_model

    samples = read_classification(news[1], NEWS).samples[:3]
    answers = []
    for spec in (str(run), str(merged), str(tiny_text_model)):
        agent = Agent.load(resolve_model(spec), max_new_tokens=8)
        result = evaluate(agent, ClassifyTask(cfg), samples, 3, "likelihood")
        answers.append([p.log_likelihoods for p in result.scores])
    # summed log-probabilities of ~12 tokens: noise 0 (benchmarks/tolerances.py), bug 5.0 (a merge that lost
    # the adapter: the base model's)
    for adapter, full, base in zip(*answers, strict=True):
        within("text_merge.log_likelihoods", difference(adapter, full), 1e-3)
        caught("text_merge.log_likelihoods", difference(base, full), 1e-3)
    assert yaml.safe_load((merged / "pigg_config.yaml").read_text())["task"] == "classify"

    result = runner.invoke(app, ["data", "stats", str(config), "--out", str(tmp_path / "stats")])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "stats" / "data_stats.json").read_text())
    assert stats["splits"]["train"]["counts"] == {label: 16 for label in LABELS}
    assert stats["splits"]["eval"]["tokens"]["samples"] == 16
    assert (tmp_path / "stats" / "classes.png").exists() and (tmp_path / "stats" / "lengths.png").exists()


def test_text_demo_writes_its_summary_and_learns(tmp_path):
    """`pigg demo text`, shortened: the summary's contract (base and tuned accuracy and macro-F1,
    items/s), the PNGs, and a tuned model far above the base on held-out articles."""
    from pigg.demo import run_text_demo

    path = run_text_demo(
        tmp_path / "demo", train_articles=640, test_articles=48, overrides=["train.max_steps=80"]
    )
    summary = json.loads(path.read_text())
    for name in ("base", "tuned"):
        assert 0 <= summary[name]["accuracy"] <= 1 and 0 <= summary[name]["macro_f1"] <= 1
    assert summary["items_per_second"] > 0 and summary["training"]["steps"] == 80
    assert summary["tuned"]["accuracy"] >= summary["base"]["accuracy"] + 0.3
    pngs = {p.rsplit("/", 1)[-1] for p in summary["reports"]["pngs"]}
    assert {"confusion.png", "classes.png", "lengths.png"} <= pngs
