"""pigg as a package people install: the wheel built from this checkout works in a fresh virtualenv from an
empty folder (recipes by name, the demos, `pigg env`); the extras pyproject.toml declares are the ones
the code asks for, and a missing one is one line naming it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO
from pigg.cli import main
from pigg.extras import EXTRAS
from pigg.recipes import RECIPES, launch_config_paths, recipe_paths


def run(command: list, cwd: Path, env: dict | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.mark.slow
def test_the_wheel_works_from_an_empty_folder_in_a_fresh_venv(tmp_path):
    # sdist first, then the wheel from the unpacked sdist (python -m build's default): both must be whole
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, REPO], tmp_path)
    (wheel,) = dist.glob("pigg-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        f"pigg/{p.relative_to(RECIPES.parent).as_posix()}" for p in (*recipe_paths(), *launch_config_paths())
    }
    assert wanted | {"pigg/py.typed", "pigg/serve/page.html"} <= shipped
    assert len(wanted) >= 20

    # A fresh venv that sees this venv's packages (nothing downloaded) but not its editable pigg: a plain
    # path line in a .pth file adds the folder without running the .pth files inside it.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "-q",
            "--no-deps",
            wheel,
        ],
        tmp_path,
    )
    python = venv / "bin" / "python"

    # every dependency the wheel's metadata declares (and the serve extra's) is installed and satisfies it
    check = (
        "import importlib.metadata as m, json; from packaging.requirements import Requirement\n"
        "reqs = [Requirement(r) for r in m.requires('pigg')]\n"
        "print(json.dumps([[str(r), m.version(r.name)] for r in reqs\n"
        "    if r.marker is None or r.marker.evaluate({'extra': 'serve'})]))"
    )
    for requirement, version in json.loads(run([python, "-c", check], tmp_path)):
        assert Requirement(requirement).specifier.contains(version, prereleases=True), (requirement, version)

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "OMP_NUM_THREADS": "1"}

    def pigg(*args, timeout: float = 300) -> str:
        return run(["pigg", *args], empty, env, timeout)

    located = run([python, "-c", "import pigg; print(pigg.__file__)"], empty, env)
    assert Path(located.strip()).is_relative_to(venv)  # the wheel's pigg, not the checkout's
    assert pigg("--version").strip() == f"pigg {importlib.metadata.version('pigg')}"  # no commit: no checkout
    listing = pigg("recipes")
    assert all(name in listing for name in ("global_lora", "seed003/qlora", "seed004_agnews_full", "zero2"))
    assert pigg("recipes", "copy", "global_lora").strip() == "global_lora.yaml"
    assert (empty / "global_lora.yaml").read_text() == (RECIPES / "global_lora.yaml").read_text()
    pigg("model", "tiny", "qwen3-vl", "tiny")
    pigg("data", "synth", "data", "--users", "3", "--per-user", "4")
    # a 2-step run of a recipe by name, from the package
    pigg("train", "demo_global", "model.name=tiny", "data.path=data", "data.train_users=all",
         "data.test_users=null", "train.max_steps=2", "train.batch_size=2", "train.save_steps=2",
         "train.output_dir=run", "train.log_dir=logs", "data.image_cache=null")  # fmt: skip
    summary = json.loads((empty / "run" / "pigg_run.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 2
    # the text demo in a shorter form (~25 s): packaged recipe, training, evaluation, reports
    out = pigg("demo", "text", "--articles", "240", "--steps", "15", "--out", "text")
    result = json.loads(Path(empty / out.strip().splitlines()[-1]).read_text())
    assert (
        result["training"]["steps"] == 15
        and result["training"]["last_loss"] < result["training"]["first_loss"]
    )
    report = json.loads(pigg("env", "--json"))
    assert Path(report["location"]).is_relative_to(venv) and report["commit"] is None
    assert report["libraries"]["transformers"] == importlib.metadata.version("transformers")
    assert sorted(p.name for p in empty.iterdir()) == [
        "data",
        "global_lora.yaml",
        "logs",
        "run",
        "text",
        "tiny",
    ]


def test_extras_match_pyproject():
    """src/pigg/extras.py names, per extra, the modules the code checks for; pyproject.toml's extras must
    install exactly those (the dev extra is the test tools')."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(declared) - {"dev"} == set(EXTRAS)
    modules_of = importlib.metadata.packages_distributions()  # module -> distributions, of what is installed
    for extra, modules in EXTRAS.items():
        distributions = {Requirement(r).name.lower() for r in declared[extra]}
        for module in modules:
            if module in modules_of:  # installed here: its distribution must be the one declared
                assert {d.lower() for d in modules_of[module]} & distributions, (extra, module)
            else:  # not installed here (vllm, deepspeed, liger on a CPU machine): named alike
                assert module.replace("_", "-") in distributions, (extra, module)


@pytest.mark.parametrize(
    ("extra", "argv"),
    [
        ("serve", ["serve", "RUN"]),
        ("serve", ["bench-serve", "RUN"]),
        ("qlora", ["train", "CONFIG", "model.quantization=nf4"]),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    extra, argv, monkeypatch, capsys, tiny_model, synth_data, tmp_path
):
    for module in EXTRAS[extra]:
        monkeypatch.setitem(sys.modules, module, None)  # import fails, as where it is not installed
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{name: {tiny_model}}}\ndata: {{path: {synth_data}}}\ntrain: {{output_dir: {tmp_path / 'run'}}}\n"
    )
    argv = [str(config) if a == "CONFIG" else str(tmp_path) if a == "RUN" else a for a in argv]
    monkeypatch.setattr(sys, "argv", ["pigg", *argv])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"pip install 'pigg[{extra}]'" in err and len(err.splitlines()) == 1


def test_deepspeed_and_liger_name_their_extras(tiny_config, monkeypatch):
    from pigg.errors import ConfigError
    from pigg.train.build import check_approach, liger_enabled

    for module in (*EXTRAS["deepspeed"], *EXTRAS["liger"]):
        monkeypatch.setitem(sys.modules, module, None)
    cfg = tiny_config("train.parallel=deepspeed", "train.deepspeed=zero2")
    with pytest.raises(ConfigError, match=r"needs the deepspeed extra .*pip install 'pigg\[deepspeed\]'"):
        check_approach(cfg, cuda=True)  # past the CPU check, as on a GPU machine
    with pytest.raises(ConfigError, match=r"pip install 'pigg\[liger\]'"):
        liger_enabled(True, cuda=True)
    assert liger_enabled("auto", cuda=True) is False  # auto: off where it is not installed, no error
