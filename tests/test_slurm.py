"""`pigg sbatch` on a real SLURM (22.05, Debian's slurm-wlm, one node started by the test): the script works
on first submission from a fresh folder, survives scancel with its progress saved, fits a run into a
1-minute limit by stopping, requeueing and resuming, and never requeues a start that failed.

`make slurm` installs SLURM and munge where apt-get can and runs this file (about 4 minutes: SLURM checks
time limits and signals every ~30 s and holds a requeued job before it starts again). `make test` leaves it
out (marker `slurm`); elsewhere it skips with the reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from slurm_cluster import Cluster, missing

pytestmark = pytest.mark.slurm
STEPS = 600  # ~50 s of training on 2 cores: more than one 1-minute job can do after its start-up


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    running = Cluster(tmp_path_factory.mktemp("slurm")).start()
    yield running
    running.stop()


def _config(tiny_model, synth_data, project: Path, **train) -> Path:
    """A LoRA run in `project`, relative paths as a user writes them; deterministic so that a run cut into
    jobs can be compared with a straight one bit for bit."""
    raw = {
        "model": {"name": str(tiny_model)},
        "data": {"path": str(synth_data), "train_users": "1-3", "max_length": 256},
        "train": {
            "method": "lora",
            "output_dir": "run",
            "log_dir": "logs",
            "learning_rate": 2e-3,
            "lr_scheduler": "constant",
            "batch_size": 4,
            "max_steps": STEPS,
            "save_steps": 10_000,
            "logging_steps": 1,
            "gradient_checkpointing": False,
            "num_workers": 1,  # a DataLoader worker, which SLURM's SIGTERM reaches too
            **train,
        },
        "lora": {"dropout": 0.0},
    }
    project.mkdir(parents=True, exist_ok=True)
    path = project / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _pigg(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pigg", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


def _bare_env() -> dict:
    """What a user's login shell has: no pigg environment on PATH, none activated."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "VIRTUAL_ENV": "", "HOME": "/root"}


def _slurm_output(project: Path, job: int) -> str:
    found = list((project / "logs").glob(f"slurm_*_{job}.out"))
    return found[0].read_text() if found else ""


def _steps_logged(project: Path) -> Counter:
    """How many times each training step ran, over every job's pigg log."""
    counts = Counter()
    for log in (project / "logs").glob("*_lora_*.log"):
        counts.update(int(n) for n in re.findall(rf"^step (\d+)/{STEPS} \|", log.read_text(), re.M))
    return counts


def test_a_start_that_fails_ends_the_job_and_an_earlier_stop_does_not_requeue_it(
    cluster, tiny_model, synth_data, tmp_path
):
    project = tmp_path / "broken"
    config = _config(tiny_model, synth_data, project)
    (project / "run").mkdir()
    stale = {"run": "run", "status": "stopped", "job_attempt": "1.0", "steps": 3}  # an earlier job's stop
    (project / "run" / "pigg_run.json").write_text(json.dumps(stale, indent=2))
    bad_data = _pigg("sbatch", str(config), "data.path=no-such-data", "--time", "5", "--gpus", "0",
                     "--cpus", "1", "--out", "bad_data.sh", cwd=project, env={"SLURM_CONF": str(cluster.conf)})  # fmt: skip
    no_env = _pigg("sbatch", str(config), "--time", "5", "--gpus", "0", "--cpus", "1",
                   "--python", str(tmp_path / "deleted-venv" / "bin" / "python"), "--out", "no_env.sh",
                   cwd=project, env={"SLURM_CONF": str(cluster.conf)})  # fmt: skip
    assert bad_data.returncode == 0 and no_env.returncode == 0, bad_data.stderr + no_env.stderr
    jobs = {name: cluster.submit(project / f"{name}.sh", tmp_path) for name in ("bad_data", "no_env")}
    for name, job_id in jobs.items():
        job = cluster.wait(
            job_id, lambda j: j["JobState"] in ("FAILED", "COMPLETED") or j["Restarts"] != "0", 120
        )
        output = _slurm_output(project, job_id)
        assert job["JobState"] == "FAILED" and job["Restarts"] == "0", (name, job, output)
        assert "requeueing" not in output, output
    assert "no-such-data" in _slurm_output(project, jobs["bad_data"])
    assert cluster.job(jobs["no_env"])["ExitCode"] == "127:0"


def test_a_run_cut_by_scancel_and_a_one_minute_limit_finishes_like_a_straight_run(
    cluster, tiny_model, synth_data, tmp_path
):
    project = tmp_path / "fresh"  # no logs folder: SLURM would fail to open its output file in it
    config = _config(tiny_model, synth_data, project)
    written = _pigg("sbatch", str(config), "--time", "1", "--gpus", "0", "--signal-before", "5",
                    "--out", "job.sh", cwd=project, env={"SLURM_CONF": str(cluster.conf)})  # fmt: skip
    assert written.returncode == 0, written.stderr
    cpus = os.cpu_count()
    if cpus < 8:  # the default 8 CPUs do not fit this node: sinfo said so
        assert f"asking for {cpus} CPUs per node" in written.stderr
    script = (project / "job.sh").read_text()
    assert (
        "#SBATCH --time=00:01:00" in script and "--gpus" not in script
    )  # 1 = one minute, as sbatch reads it

    # the straight run to compare with, beside the jobs
    straight_dir = tmp_path / "straight"
    straight = subprocess.Popen(
        [sys.executable, "-m", "pigg", "train", str(config), "train.output_dir=" + str(straight_dir / "run"),
         "train.log_dir=" + str(straight_dir / "logs")],
        cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip

    # 1. scancel mid-run: SIGTERM to every process of the job; pigg saves, the job ends, no requeue
    first = cluster.submit(project / "job.sh", tmp_path, env=_bare_env())  # from another folder
    deadline = time.time() + 120
    while not re.search(rf"^step [3-9]\d*/{STEPS} \|", _slurm_output(project, first), re.M):
        assert time.time() < deadline, _slurm_output(project, first) + cluster.logs()
        time.sleep(0.5)
    cluster.run("scancel", str(first))
    job = cluster.wait(
        first, lambda j: j["JobState"] == "CANCELLED" and "not requeued" in _slurm_output(project, first), 90
    )
    output = _slurm_output(project, first)
    assert job["Restarts"] == "0" and "received SIGTERM" in output and "DataLoader worker" not in output, (
        output
    )
    assert "SIGTERM from SLURM (scancel or preemption)" in output
    stopped = json.loads((project / "run" / "pigg_run.json").read_text())
    assert stopped["status"] == "stopped" and stopped["job_attempt"] == f"{first}.0"
    assert (project / "run" / f"checkpoint-{stopped['steps']}").is_dir()

    # 2. submitted again: resumes, stops before its 1-minute limit, requeues itself until the run is done
    started = time.time()
    second = cluster.submit(project / "job.sh", tmp_path, env=_bare_env())
    job = cluster.wait(
        second, lambda j: j["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), 480, every=2
    )
    output = _slurm_output(project, second)
    print(f"second job: {job['Restarts']} requeue(s), {time.time() - started:.0f}s\n{output}")
    assert job["JobState"] == "COMPLETED" and int(job["Restarts"]) >= 1, output
    assert output.count("requeueing job") == int(job["Restarts"]), output
    summary = json.loads((project / "run" / "pigg_run.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == STEPS

    # every step ran exactly once over the three starts, and the adapter is the straight run's, bit for bit
    assert straight.wait(timeout=300) == 0
    counts = _steps_logged(project)
    assert sorted(counts) == list(range(1, STEPS + 1)) and set(counts.values()) == {1}, counts.most_common(3)
    ours = load_file(project / "run" / "adapter_model.safetensors")
    theirs = load_file(straight_dir / "run" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
