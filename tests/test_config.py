import pytest

from pigg.config import ExperimentConfig, build_config, load_config, parse_users
from pigg.errors import ConfigError
from pigg.recipes import recipe_paths

MINIMAL = {"model": {"name": "m"}, "data": {"path": "d"}}


def test_every_shipped_recipe_validates():
    # accelerate/ holds accelerate's launch configs, loaded by test_approaches
    recipes = recipe_paths()
    assert len(recipes) >= 15 and not any("accelerate" in p.parts for p in recipes)
    for recipe in recipes:
        assert isinstance(load_config(recipe), ExperimentConfig), recipe


def test_seed_000_lora_recipe_has_the_seed_numbers():
    cfg = load_config("global_lora")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.bias) == (8, 32, 0.1, "none")
    t = cfg.train
    assert (t.learning_rate, t.epochs, t.batch_size, t.grad_accum, t.warmup_steps) == (1e-6, 1, 1, 8, 50)
    assert (t.weight_decay, t.save_steps, t.save_total_limit, t.eval) == (0.01, 500, 3, False)
    assert t.gradient_checkpointing and cfg.model.max_pixels == 1280 * 28 * 28
    assert parse_users(cfg.data.train_users) == list(range(11, 84))
    assert parse_users(cfg.data.test_users) == list(range(1, 11))
    assert load_config("global_full").train.method == "full"


def test_overrides_are_typed_and_nested():
    cfg = build_config(MINIMAL, ["train.learning_rate=2e-5", "lora.r=16", "data.train_users=[1, '4-5']"])
    assert cfg.train.learning_rate == 2e-5 and cfg.lora.r == 16
    assert parse_users(cfg.data.train_users) == [1, 4, 5]


def test_unknown_key_names_the_key_and_suggests_the_nearest():
    with pytest.raises(ConfigError) as err:
        build_config(MINIMAL, ["train.learnin_rate=1e-4"])
    assert "unknown key 'train.learnin_rate'" in str(err.value)
    assert "did you mean 'train.learning_rate'" in str(err.value)


def test_unknown_section_is_suggested_too():
    with pytest.raises(ConfigError, match="unknown key 'lroa'; did you mean 'lora'"):
        build_config({**MINIMAL, "lroa": {"r": 4}})


def test_wrong_type_names_key_and_value_and_all_problems_come_at_once():
    with pytest.raises(ConfigError) as err:
        build_config(MINIMAL, ["train.max_steps=abc", "train.method=qlora", "data.train_users=1-x"])
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "'train.max_steps'" in text and "'abc'" in text
    assert "'train.method'" in text and "'qlora'" in text
    assert "'data.train_users'" in text


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing required key 'model.name'"):
        build_config({"model": {}, "data": {"path": "d"}})


@pytest.mark.parametrize(
    ("spec", "ids"),
    [
        ("11-13", [11, 12, 13]),
        ("1-2,7", [1, 2, 7]),
        (5, [5]),
        ([3, "1-2"], [1, 2, 3]),
        ("all", None),
        (None, None),
    ],
)
def test_user_selections(spec, ids):
    assert parse_users(spec) == ids


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form"):
        build_config(MINIMAL, ["train.learning_rate"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = build_config(MINIMAL, ["lora.r=4"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
