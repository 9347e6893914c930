"""`pigg train`: config → data → model → HF Trainer → a run folder that loads on its own.

One readable path, top to bottom: set up the device and the log, check the data, build the model, train,
save. The run folder holds the final adapter or model, the processor (tokenizer, image processor, chat
template), the resolved config and a summary, so it can be loaded without the config that made it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pigg.config import ExperimentConfig
from pigg.tasks import task_for
from pigg.train.build import (
    ATTEMPT_ENV,
    ATTEMPT_KEY,
    RUN_CONFIG,
    RUN_SUMMARY,
    build_run,
    check_approach,
    checkpoint_bytes,
    liger_enabled,
    precision,
    prepare_data,
    process_rank,
)


@dataclass
class TrainResult:
    summary: dict  # also written to RUN/pigg_run.json
    model: object  # the trained model in memory (a PeftModel for LoRA)

    @property
    def stopped(self) -> bool:
        """True when the run saved a checkpoint and stopped early (time limit or signal) to be resumed."""
        return self.summary["status"] == "stopped"


def train(
    cfg: ExperimentConfig,
    log_dir: str | Path | None = None,
    resume: str | bool | None = None,
    started: float | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Run the training described by `cfg` and save the run folder.

    `resume`: True continues the run's latest complete checkpoint, a path that checkpoint. `started` is
    when the job began (time.time()); `train.time_limit` counts from it. `callbacks`: extra
    TrainerCallbacks.
    """
    import torch
    from transformers import set_seed

    from pigg.models.trainable import count_parameters, trainable_line
    from pigg.train.callbacks import quiet_output, tee_output
    from pigg.train.control import RunControl, clock, resume_point

    started = time.time() if started is None else started
    run_dir = Path(cfg.train.output_dir)
    rank, world = process_rank()
    main = rank == 0  # only the first process writes the log, the run folder and TensorBoard
    stamp = time.strftime("%Y%m%d_%H%M%S")
    log_path = Path(log_dir or cfg.train.log_dir) / f"{cfg.name}_{cfg.train.method}_{stamp}.log"
    with tee_output(log_path) if main else quiet_output():
        print(f"pigg train: run '{cfg.name}', method {cfg.train.method}, model {cfg.model.name}")
        print(f"log file: {log_path}")
        if world > 1:
            print(f"{world} processes, train.parallel={cfg.train.parallel}")
        checkpoint = resume_point(run_dir, resume)
        if checkpoint is not None:
            print(f"resuming from {checkpoint}")
        cuda, dtype = precision(cfg)
        check_approach(cfg, cuda)  # a machine that cannot run it hears it now, before any weights load
        liger = liger_enabled(cfg.train.liger_kernel, cuda)
        if cuda:
            print(
                f"GPUs: {torch.cuda.device_count()} ({torch.cuda.get_device_name(0)}), dtype {dtype}, "
                f"Liger kernels {'on' if liger else 'off'}"
            )
        else:
            print(f"No GPU found: training on CPU in {str(dtype).removeprefix('torch.')}")
        set_seed(cfg.train.seed)

        data = prepare_data(cfg, run_dir)
        print(
            f"data: {len(data.train)} training samples from "
            + (f"users {cfg.data.train_users}" if task_for(cfg).by_users else cfg.data.path)
            + (f", {len(data.eval)} eval samples" if data.eval else "")
            + f" (checked in {time.time() - started:.1f}s)"
        )
        model, trainer = build_run(cfg, data, run_dir, dtype, cuda)
        print(trainable_line(model))
        limit = cfg.train.time_limit_seconds
        control = RunControl(limit, started, checkpoint_bytes(model, "lora" if cfg.saves_adapter else "full"))
        for callback in [control, *(callbacks or [])]:
            trainer.add_callback(callback)
        if limit:
            print(f"time limit {clock(limit)}: a checkpoint is saved before it, then the run stops")

        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_CONFIG).write_text(cfg.to_yaml())
            # Until this job ends the run is running: a stale "stopped" summary must not requeue a crash.
            (run_dir / RUN_SUMMARY).write_text(
                json.dumps(
                    {
                        "run": cfg.name,
                        "status": "running",
                        ATTEMPT_KEY: os.environ.get(ATTEMPT_ENV),
                        "method": "lora" if cfg.saves_adapter else "full",
                        "base_model": cfg.model.name,
                    }
                )
            )
        control.install()
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            control.uninstall()
        losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
        eval_losses = [(e["step"], e["eval_loss"]) for e in trainer.state.log_history if "eval_loss" in e]
        rewards = [(e["step"], e["reward"]) for e in trainer.state.log_history if "reward" in e]  # GRPO's
        summary = {
            "run": cfg.name,
            "status": "stopped" if control.reason else "complete",
            ATTEMPT_KEY: os.environ.get(ATTEMPT_ENV),
            "method": "lora" if cfg.saves_adapter else "full",
            "base_model": cfg.model.name,
            "family": data.family.name,
            "parallel": cfg.train.parallel,
            "world_size": world,
            "quantization": cfg.model.quantization,
            "train_samples": len(data.train),
            "trainable_params": count_parameters(model)[0],
            "steps": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "resumed_from": str(checkpoint) if checkpoint else None,
            "train_seconds": round(time.time() - started, 1),
            "first_loss": losses[0][1] if losses else None,
            "last_loss": losses[-1][1] if losses else None,
            "mean_train_loss": result.training_loss,
            "losses": losses,
            "eval_losses": eval_losses,
            **({"stage": cfg.train.stage, "rewards": rewards} if cfg.train.stage != "sft" else {}),
            "log_file": str(log_path),
        }
        if control.reason:
            summary["stop_reason"] = control.reason
            summary["checkpoint"] = str(run_dir / f"checkpoint-{trainer.state.global_step}")
            summary["resume_command"] = f"pigg train {run_dir / RUN_CONFIG} --resume"
            if main:
                (run_dir / RUN_SUMMARY).write_text(json.dumps(summary, indent=2))
            print(
                f"stopped at step {summary['steps']}/{summary['max_steps']} ({control.reason}); "
                f"saved {summary['checkpoint']}. Resume with:\n  {summary['resume_command']}"
            )
            return TrainResult(summary, trainer.model)
        if trainer.is_fsdp_enabled:  # the final model is one from_pretrained folder, not shards
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(run_dir))  # every process takes part (FSDP, ZeRO-3 gather); rank 0 writes
        if main:
            (run_dir / RUN_SUMMARY).write_text(json.dumps(summary, indent=2))
        print(
            f"done: {summary['steps']} steps in {summary['train_seconds']}s; loss {summary['first_loss']:.4f} "
            f"-> {summary['last_loss']:.4f}; saved to {run_dir}"
        )
        return TrainResult(summary, trainer.model)
