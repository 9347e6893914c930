"""Run control on tiny runs: exact resume, atomic checkpoints, time limits and stop signals."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from pigg.config import parse_duration
from pigg.train.control import EXIT_RESUMABLE, STAGING, latest_complete
from pigg.train.run import train


class SignalDuring(TrainerCallback):
    """Sends `signum` to this very process while step `step` runs, as a scheduler would."""

    def __init__(self, step: int, signum=signal.SIGUSR1):
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


def _adapter(run):
    return load_file(str(run / "adapter_model.safetensors"))


def test_stopped_and_resumed_run_matches_a_straight_run_exactly(tiny_config, tmp_path, capsys):
    # LoRA with dropout (RNG in every step), 24 samples in batches of 4: step 8 is in the second epoch, so
    # the resumed run must restore the model, optimizer, scheduler, RNG and the reshuffled data order.
    common = ("train.method=lora", "train.max_steps=8", "train.learning_rate=5e-3", "lora.dropout=0.1")
    straight = train(tiny_config(*common, f"train.output_dir={tmp_path / 'straight'}"))
    assert straight.summary["status"] == "complete"

    cfg = tiny_config(*common, f"train.output_dir={tmp_path / 'stopped'}")
    first = train(cfg, callbacks=[SignalDuring(3)])
    assert first.stopped and first.summary["steps"] == 3 and "SIGUSR1" in first.summary["stop_reason"]
    assert (
        first.summary["resume_command"] == f"pigg train {tmp_path / 'stopped' / 'pigg_config.yaml'} --resume"
    )
    assert not (tmp_path / "stopped" / "adapter_model.safetensors").exists()  # no final model yet
    assert "Resume with:" in capsys.readouterr().out

    second = train(cfg, resume=True)
    assert second.summary["status"] == "complete"
    assert second.summary["resumed_from"] == str(tmp_path / "stopped" / "checkpoint-3")
    straight_losses = dict(straight.summary["losses"])
    resumed_losses = dict(first.summary["losses"]) | dict(second.summary["losses"])
    assert [resumed_losses[s] for s in range(1, 9)] == [straight_losses[s] for s in range(1, 9)]
    a, b = _adapter(tmp_path / "straight"), _adapter(tmp_path / "stopped")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical


def test_a_save_killed_midway_leaves_no_checkpoint_and_resume_skips_incomplete_ones(
    tiny_config, tmp_path, monkeypatch, capsys
):
    from pigg.train.trainer import PiggTrainer

    run = tmp_path / "run"
    train(tiny_config("train.method=lora", "train.max_steps=4", "train.save_steps=2"))
    assert latest_complete(run) == run / "checkpoint-4"

    # The job dies while writing checkpoint-6: only the staging folder holds it.
    def die(self, output_dir):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(PiggTrainer, "_save_rng_state", die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config("train.method=lora", "train.max_steps=6", "train.save_steps=2"), resume=True)
    monkeypatch.undo()
    assert not (run / "checkpoint-6").exists()
    assert (run / STAGING / "checkpoint-6" / "adapter_model.safetensors").exists()

    # A checkpoint folder that lacks its last file (written by some other tool, or a damaged disk).
    (run / "checkpoint-4" / "trainer_state.json").unlink()
    capsys.readouterr()
    assert latest_complete(run) == run / "checkpoint-2"
    warnings = capsys.readouterr().out
    assert f"skipping {run / STAGING / 'checkpoint-6'}" in warnings
    assert f"skipping {run / 'checkpoint-4'}: incomplete checkpoint" in warnings

    resumed = train(tiny_config("train.method=lora", "train.max_steps=6", "train.save_steps=2"), resume=True)
    assert resumed.summary["resumed_from"] == str(run / "checkpoint-2")
    assert resumed.summary["status"] == "complete" and resumed.summary["steps"] == 6
    assert (run / "checkpoint-6" / "trainer_state.json").exists()


def test_time_limit_saves_before_the_limit_and_stops(tiny_config, tmp_path):
    # The job "started" 100 s ago with a 120 s limit: 20 s are left for a 2,000-step run. 20 s, not the 10 of
    # before: the model and data load inside them, several times slower with a CPU hog beside the suite, and
    # the run stops ~4.5 s before the limit (one step, the first save's estimate, 2% of the limit).
    started = time.time() - 100
    result = train(tiny_config("train.max_steps=2000", "train.time_limit=120s"), started=started)
    finished = time.time() - started
    assert result.stopped and "time limit" in result.summary["stop_reason"]
    assert 1 <= result.summary["steps"] < 2000
    assert finished < 120, f"the run ended {finished:.1f}s after its start, past its 120 s limit"
    assert latest_complete(tmp_path / "run") == tmp_path / "run" / f"checkpoint-{result.summary['steps']}"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("8h", 28800), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("2d", 172800), ("7:30:00", 27000),
     ("1-00:00:00", 86400), ("30:00", 1800), ("3600", 3600), (27000, 27000)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["8 hours", "h8", "", "0s", "-5"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def _job_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _start_training(cfg, tmp_path) -> subprocess.Popen:
    """`pigg train` on `cfg` in a process of its own, its output to read line by line."""
    config_file = tmp_path / "job.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return subprocess.Popen(
        [sys.executable, "-m", "pigg.cli", "train", str(config_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_job_env(),
    )  # fmt: skip


def test_sigterm_to_a_running_job_saves_exits_75_and_resumes(tiny_config, tmp_path):
    job = _start_training(tiny_config("train.max_steps=14", "train.method=lora"), tmp_path)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("step 2/14"):
            job.send_signal(signal.SIGTERM)
    rc = job.wait(timeout=120)
    output = "".join(lines)
    assert rc == EXIT_RESUMABLE, output
    assert "received SIGTERM" in output
    stopped_at = latest_complete(tmp_path / "run")
    assert stopped_at is not None and 2 <= int(stopped_at.name.split("-")[1]) < 14, output
    command = f"pigg train {tmp_path / 'run' / 'pigg_config.yaml'} --resume"
    assert command in output

    resumed = subprocess.run(
        [sys.executable, "-m", "pigg.cli", *command.split()[1:]],
        capture_output=True,
        text=True,
        env=_job_env(),
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming from {stopped_at}" in resumed.stdout
    assert "done: 14 steps" in resumed.stdout
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_a_stop_signal_while_the_model_loads_stops_after_the_first_step(tiny_config, tmp_path):
    """SLURM sends its warning up to a minute early: in a short job it can arrive while pigg still loads.
    The default action of SIGUSR1 would kill the process with nothing saved and no exit code 75."""
    job = _start_training(tiny_config("train.max_steps=50", "train.method=lora"), tmp_path)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if line.startswith("pigg train: run"):  # printed before the data and the model load
            job.send_signal(signal.SIGUSR1)
    output = "".join(lines)
    assert job.wait(timeout=120) == EXIT_RESUMABLE, output
    assert "received SIGUSR1 while starting" in output and "stopped at step 1/50" in output, output
    assert latest_complete(tmp_path / "run").name == "checkpoint-1"


def test_resume_path_option_on_the_command_line(tmp_path):
    from pigg.cli import _resume_path_option

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    args = ["train", "c.yaml", "--resume", str(checkpoint), "train.max_steps=8"]
    assert _resume_path_option(args) == [
        "train",
        "c.yaml",
        "--resume-from",
        str(checkpoint),
        "train.max_steps=8",
    ]
    assert _resume_path_option(["train", "c.yaml", "--resume", "train.max_steps=8"])[2] == "--resume"


def test_tensorboard_and_log_file_carry_the_training_numbers(tiny_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(
        "data.train_users=1-2",
        "data.test_users=3",
        "train.eval=true",
        "train.max_steps=4",
        "train.save_steps=2",
    )
    result = train(cfg)
    assert [step for step, _ in result.summary["eval_losses"]] == [2, 4]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("loss", "learning_rate", "grad_norm", "samples_per_second", "tokens_per_second"):
        assert f"train/{tag}" in tags, tags
    assert "eval/loss" in tags
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    # TensorBoard keeps float32: the same losses rounded (relative 6e-8 < approx's 1e-6); another step's loss
    # differs by more than 1e-3
    assert logged == pytest.approx(dict(result.summary["losses"]))
    log = next((tmp_path / "logs").glob("*.log")).read_text()
    assert "step 4/4 | eval_loss " in log and "tokens/s" in log and "grad_norm" in log


def test_checkpoints_saved_by_fsdp_or_deepspeed_count_as_complete(tmp_path):
    from pigg.train.control import is_complete

    for name, weights in (("fsdp", "pytorch_model_fsdp_0"), ("ds", "global_step10"), ("none", None)):
        folder = tmp_path / name / "checkpoint-10"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
        if weights:
            (folder / weights).mkdir()
        assert is_complete(folder) == (weights is not None), name


def test_workers_fork_only_after_the_last_pass_feeder_threads_ended(monkeypatch):
    """A DataLoader forks new workers on every pass while the last pass's queue feeder threads may still
    be exiting, and CPython 3.11 can then deadlock the child at fork (a resumed 2-process run hung so).
    pigg's loaders wait for those threads first. Measured without the wait: a feeder still alive at 2 of
    20 forks, so 30 passes catch its absence with probability ~96%."""
    from torch.utils.data import DataLoader

    from pigg.train.trainer import _prepare_workers

    real_fork, alive_at_fork = os.fork, []
    for _ in range(30):
        loader = _prepare_workers(DataLoader(list(range(4)), batch_size=2, num_workers=1))
        first = iter(loader)
        last_queues = list(first._index_queues)
        list(first)  # exhausted: its workers shut down, its queues closed, their feeders exiting

        def fork(queues=last_queues):
            alive_at_fork.append(any(q._thread is not None and q._thread.is_alive() for q in queues))
            return real_fork()

        monkeypatch.setattr(os, "fork", fork)
        assert [batch.tolist() for batch in iter(loader)] == [[0, 1], [2, 3]]
        monkeypatch.setattr(os, "fork", real_fork)
    assert len(alive_at_fork) == 30 and not any(alive_at_fork)
