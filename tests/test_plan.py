"""`pigg plan` measures real steps per configuration; `pigg sbatch` writes a script that resumes, forwards
SLURM's warning signal and requeues."""

import subprocess

import pytest
import yaml

from pigg.errors import ConfigError
from pigg.train.plan import HEADER, expand_tries, markdown, plan, run_steps
from pigg.train.slurm import sbatch_script


def test_expand_tries_crosses_axes_and_pairs_plus_joined_keys():
    assert expand_tries([]) == [[]]
    assert expand_tries(["lora.r=16,32", "train.batch_size=2,4"]) == [
        ["lora.r=16", "train.batch_size=2"],
        ["lora.r=16", "train.batch_size=4"],
        ["lora.r=32", "train.batch_size=2"],
        ["lora.r=32", "train.batch_size=4"],
    ]
    assert expand_tries(["train.batch_size+train.grad_accum=2+4,4+2"]) == [
        ["train.batch_size=2", "train.grad_accum=4"],
        ["train.batch_size=4", "train.grad_accum=2"],
    ]
    with pytest.raises(ConfigError, match="needs 2 values"):
        expand_tries(["train.batch_size+train.grad_accum=2"])
    with pytest.raises(ConfigError):
        expand_tries(["lora.r"])


def _write(cfg, path):
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_plan_measures_every_combination(tiny_config, tmp_path):
    config = _write(
        tiny_config("train.method=lora", "train.max_steps=-1", "train.epochs=2", "train.time_limit=1h"),
        tmp_path / "c.yaml",
    )
    rows = plan(config, tries=["lora.r=4,32"], warmup=1, steps=2, progress=lambda m: None)
    assert [r.tried for r in rows] == ["lora.r=4", "lora.r=32"]
    for row in rows:
        assert row.samples == 24 and row.samples_per_step == 4
        assert row.steps == 12  # 24 samples / 4 per step, 2 epochs
        assert row.text_tokens > 0 and row.image_tokens > 0
        assert 0 < row.step_min <= row.step_seconds <= row.step_max
        assert row.saves == 12 // 100 + 1 and row.save_seconds > 0
        # pytest.approx's default tolerance (relative 1e-6) on float64 arithmetic of hand-written numbers: no CPU
        # changes IEEE sums and quotients of a few terms (noise ~1e-16); a wrong formula moves them by more than 1e-2.
        assert row.total_seconds == pytest.approx(
            row.startup_seconds + row.steps * row.step_seconds + row.saves * row.save_seconds, abs=0.1
        )
        assert row.peak_memory > 100e6 and row.peak_memory_kind == "rss"
        assert row.checkpoint_bytes > 0 and row.time_limit == 3600 and row.fits is True
    # a bigger rank saves a bigger adapter (and optimizer state)
    assert rows[1].checkpoint_bytes > rows[0].checkpoint_bytes
    table = markdown(rows)
    assert table.splitlines()[0] == "| " + " | ".join(HEADER) + " |"
    assert len(table.splitlines()) == 2 + len(rows) + 2


def test_run_steps_counts_like_the_trainer(tiny_config):
    cfg = tiny_config("train.max_steps=-1", "train.epochs=2.5", "train.batch_size=2", "train.grad_accum=4")
    assert run_steps(100, cfg, 1) == 30  # 50 batches -> 12 steps per epoch
    assert run_steps(100, cfg, 2) == 15
    assert run_steps(100, tiny_config("train.max_steps=7"), 1) == 7


def test_sbatch_script_resumes_forwards_the_signal_and_requeues(tiny_config, tmp_path):
    config = _write(tiny_config("train.time_limit=7:30:00"), tmp_path / "c.yaml")
    script = sbatch_script(config, ["lora.r=32"], gpus=1, account="ingrai", workdir=tmp_path)
    assert "#SBATCH --time=07:30:00" in script  # from train.time_limit
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --requeue" in script
    assert "#SBATCH --account=ingrai" in script and "#SBATCH --gpus-per-node=1" in script
    assert f"pigg train {config} lora.r=32 --resume --time-limit 27000 &" in script
    assert 'kill -USR1 "$PID"' in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert '"$rc" -eq 75' in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # valid bash

    multi = sbatch_script(config, gpus=4, time="2d")
    assert "#SBATCH --time=2-00:00:00" in multi and "#SBATCH --nodes=1" in multi
    assert f"pigg train {config} --resume --time-limit 172800 --nproc 4 &" in multi
    assert 'kill -USR1 "$PID"' in multi  # pigg's launcher hands it to its training processes

    nodes = sbatch_script(config, gpus=8, nodes=4, time="2d")
    assert "#SBATCH --nodes=4" in nodes and "#SBATCH --gpus-per-node=8" in nodes
    assert 'export HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in nodes
    # srun forwards the signal to one launcher per node; each expands its own $SLURM_NODEID
    assert (
        f"srun --ntasks-per-node=1 bash -c 'exec pigg train {config} --resume --time-limit 172800 --nproc 8 "
        "--nnodes 4 --node-rank $SLURM_NODEID --master-addr $HEAD --master-port 29500' &"
    ) in nodes
    path.write_text(nodes)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    with pytest.raises(ValueError, match="signal-before"):
        sbatch_script(config, time="4m", signal_before=300)


def test_sbatch_script_forwards_slurms_warning_and_requeues(tiny_config, tmp_path):
    """Run the script with bash as SLURM would, signal the batch shell, and watch pigg save and the job
    requeue itself (scontrol is a stand-in that records its arguments)."""
    import os
    import signal
    import sys
    from pathlib import Path

    config = _write(tiny_config("train.max_steps=200", "train.method=lora"), tmp_path / "c.yaml")
    script = tmp_path / "job.sh"
    script.write_text(sbatch_script(config, time="30m", signal_before=60, workdir=tmp_path, venv=None))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f'#!/bin/bash\necho "$@" > {tmp_path / "scontrol.args"}\n')
    (fake / "scontrol").chmod(0o755)
    env = dict(os.environ, SLURM_JOB_ID="4242", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{fake}:{Path(sys.executable).parent}:{env['PATH']}"
    job = subprocess.Popen(
        ["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("step 2/200"):
            job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@60 does
    output = "".join(lines)
    assert job.wait(timeout=120) == 0, output
    assert "SIGUSR1 from SLURM" in output and "received SIGUSR1" in output
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"], output
    assert '"status": "stopped"' in (tmp_path / "run" / "pigg_run.json").read_text()
