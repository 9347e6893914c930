"""`pigg plan` measures real steps per configuration; `pigg sbatch` writes a script that resumes, forwards
SLURM's warning signal and requeues."""

import subprocess

import pytest
import yaml

from pigg.errors import ConfigError
from pigg.train.plan import HEADER, expand_tries, markdown, plan, run_steps
from pigg.train.slurm import job_cpus, sbatch_script, slurm_duration


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
    python = tmp_path / "env" / "bin" / "python"
    script = sbatch_script(config, ["lora.r=32"], gpus=1, account="ingrai", workdir=tmp_path, python=python)
    assert "#SBATCH --time=07:30:00" in script  # from train.time_limit
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --requeue" in script
    assert "#SBATCH --account=ingrai" in script and "#SBATCH --gpus-per-node=1" in script
    assert "#SBATCH --cpus-per-task=8" in script
    # absolute: SLURM opens the output file before the script runs, from the job's folder
    assert (
        f"#SBATCH --chdir={tmp_path}" in script
        and f"#SBATCH --output={tmp_path}/logs/slurm_%x_%j.out" in script
    )
    # the environment that wrote it, not a .venv relative to wherever sbatch is run
    assert f"export PIGG_PYTHON={python}" in script and f"export PATH={python.parent}:" in script
    assert f'"$PIGG_PYTHON" -m pigg train {config} lora.r=32 --resume --time-limit 27000 &' in script
    assert 'kill -USR1 "$PID"' in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert 'export PIGG_JOB_ATTEMPT="$SLURM_JOB_ID.${SLURM_RESTART_COUNT:-0}"' in script
    assert '"$rc" -eq 75' in script and "trap 'TERM_SEEN=1" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0  # valid bash

    multi = sbatch_script(config, gpus=4, time="2-0")
    assert "#SBATCH --time=2-00:00:00" in multi and "#SBATCH --nodes=1" in multi
    assert f"pigg train {config} --resume --time-limit 172800 --nproc 4 &" in multi
    assert 'kill -USR1 "$PID"' in multi  # pigg's launcher hands it to its training processes
    assert "#SBATCH --cpus-per-task=32" in multi

    nodes = sbatch_script(config, gpus=8, nodes=4, time="2d")
    assert "#SBATCH --nodes=4" in nodes and "#SBATCH --gpus-per-node=8" in nodes
    assert 'export HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in nodes
    # srun forwards the signal to one launcher per node; each expands its own $SLURM_NODEID
    assert (
        f"""srun --ntasks-per-node=1 bash -c 'exec "$PIGG_PYTHON" -m pigg train {config} --resume --time-limit """
        "172800 --nproc 8 --nnodes 4 --node-rank $SLURM_NODEID --master-addr $HEAD --master-port 29500' &"
    ) in nodes
    path.write_text(nodes)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    with pytest.raises(ValueError, match="signal-before"):
        sbatch_script(config, time="4", signal_before=300)  # 4 minutes: shorter than the warning


def test_sbatch_on_cpu_nodes_and_small_nodes(tiny_config, tmp_path):
    config = _write(tiny_config(), tmp_path / "c.yaml")
    cpu = sbatch_script(config, gpus=0, time="30", node_cpus=2)
    assert "--gpus" not in cpu and "gres" not in cpu  # a node without GPUs rejects any GPU request
    assert "#SBATCH --cpus-per-task=2" in cpu and "--nproc" not in cpu
    assert job_cpus(0, None, 2) == (
        2,
        "asking for 2 CPUs per node, all that the largest node has (8 by default)",
    )
    assert job_cpus(2, None, 64) == (16, None) and job_cpus(2, None, None) == (16, None)
    assert job_cpus(1, 3, 2) == (3, None)  # asked for explicitly: SLURM says whether it fits
    with pytest.raises(ValueError, match="--gpus must be 0"):
        sbatch_script(config, gpus=-1, time="30")


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("2", 120),  # a bare number is minutes, as sbatch reads it
        ("90", 5400),
        ("30:15", 1815),  # M:S
        ("7:30:00", 27000),  # H:M:S
        ("2-12", 216000),  # D-H
        ("1-02:30", 95400),  # D-H:M
        ("1-00:00:30", 86430),  # D-H:M:S
        ("8h", 28800),
        ("1h30m", 5400),
        ("45s", 45),
    ],
)
def test_sbatch_time_is_read_as_slurm_reads_it(text, seconds):
    assert slurm_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "UNLIMITED", "two hours", "1:2:3:4"])
def test_sbatch_time_refuses_what_slurm_would_not_read_as_a_limit(text):
    with pytest.raises(ValueError, match="--time"):
        slurm_duration(text)


def _run_job_script(tmp_path, config, time_offset: int = 0, **options):
    """The script under bash as SLURM would run it, with stand-ins for scontrol (records its arguments)
    and date (+%s shifted by the seconds in tmp_path/clock, to stand at the time limit)."""
    import os
    import sys
    from pathlib import Path

    script = tmp_path / "job.sh"
    script.write_text(sbatch_script(config, time="30", signal_before=60, workdir=tmp_path, **options))
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "scontrol").write_text(f'#!/bin/bash\necho "$@" > {tmp_path / "scontrol.args"}\n')
    clock = tmp_path / "clock"
    clock.write_text(str(time_offset))
    (fake / "date").write_text(
        f'#!/bin/bash\nif [ "$*" = "+%s" ]; then echo $(( $(/bin/date +%s) + $(cat {clock}) )); '
        'else exec /bin/date "$@"; fi\n'
    )
    for tool in ("scontrol", "date"):
        (fake / tool).chmod(0o755)
    env = dict(os.environ, SLURM_JOB_ID="4242", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{fake}:{Path(sys.executable).parent}:{env['PATH']}"
    # a session of its own: a signal to its process group reaches every process of the job, as SLURM's does
    return subprocess.Popen(
        ["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip


def test_sbatch_script_forwards_slurms_warning_and_requeues(tiny_config, tmp_path):
    """Signal the batch shell as --signal=B:USR1 does and watch pigg save and the job requeue itself."""
    import json
    import signal

    config = _write(tiny_config("train.max_steps=200", "train.method=lora"), tmp_path / "c.yaml")
    job = _run_job_script(tmp_path, config)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("step 2/200"):
            job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@60 does
    output = "".join(lines)
    assert job.wait(timeout=120) == 0, output
    assert "SIGUSR1 from SLURM" in output and "received SIGUSR1" in output
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"], output
    summary = json.loads((tmp_path / "run" / "pigg_run.json").read_text())
    assert summary["status"] == "stopped" and summary["job_attempt"] == "4242.0"


@pytest.mark.parametrize("time_up", [False, True], ids=["scancel", "time-limit"])
def test_sigterm_to_every_process_of_the_job_saves_and_requeues_only_at_the_time_limit(
    tiny_config, tmp_path, time_up
):
    """SLURM's SIGTERM reaches the batch shell, pigg and its DataLoader workers at once. pigg saves either
    way; the job requeues only when its time is up (after scancel it must end)."""
    import json
    import os
    import signal

    cfg = tiny_config("train.max_steps=200", "train.method=lora", "train.num_workers=2")
    job = _run_job_script(tmp_path, _write(cfg, tmp_path / "c.yaml"))
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("step 2/200"):
            if time_up:
                (tmp_path / "clock").write_text(str(30 * 60))  # the job's 30 minutes have passed
            os.killpg(job.pid, signal.SIGTERM)
    output = "".join(lines)
    code = job.wait(timeout=120)
    assert "received SIGTERM" in output and "DataLoader worker" not in output, output
    summary = json.loads((tmp_path / "run" / "pigg_run.json").read_text())
    assert summary["status"] == "stopped" and summary["job_attempt"] == "4242.0", output
    assert (tmp_path / "run" / f"checkpoint-{summary['steps']}").is_dir()
    requeued = (tmp_path / "scontrol.args").is_file()
    if time_up:
        assert "SIGTERM from SLURM (time limit)" in output and code == 0 and requeued, output
    else:
        assert "SIGTERM from SLURM (scancel or preemption)" in output, output
        assert code == 75 and not requeued and "not requeued: submit this script again" in output, output


def test_a_start_that_fails_is_not_requeued_by_an_earlier_jobs_stop(tiny_config, tmp_path):
    """A stopped summary left by an earlier job, then a start that fails before pigg writes anything: the
    script must not read the old stop as this job's (it requeued forever)."""
    import json

    cfg = tiny_config("data.path=" + str(tmp_path / "no-such-data"))
    (tmp_path / "run").mkdir()
    stale = {"run": "run", "status": "stopped", "job_attempt": "4100.0", "steps": 3}
    (tmp_path / "run" / "pigg_run.json").write_text(json.dumps(stale, indent=2))
    job = _run_job_script(tmp_path, _write(cfg, tmp_path / "c.yaml"))
    output = job.stdout.read()
    assert job.wait(timeout=120) not in (0, 75), output
    assert "no-such-data" in output and not (tmp_path / "scontrol.args").exists(), output

    missing = _run_job_script(tmp_path, _write(cfg, tmp_path / "c.yaml"), python=tmp_path / "gone" / "python")
    output = missing.stdout.read()
    assert missing.wait(timeout=60) == 127 and not (tmp_path / "scontrol.args").exists(), output
