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

from pigg.config import ExperimentConfig, parse_users
from pigg.data.render import Renderer
from pigg.data.sample import Sample
from pigg.data.sources import read_samples
from pigg.data.validate import enforce, validate
from pigg.errors import ConfigError
from pigg.models.families import Family
from pigg.models.loading import load_processor, resolve_family

RUN_SUMMARY = "pigg_run.json"
RUN_CONFIG = "pigg_config.yaml"


def select_gpus(gpus: str | None) -> None:
    """Restrict CUDA to `gpus` ("0" or "0,1"); must run before CUDA initialises, as the CLI does."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus


@dataclass
class PreparedData:
    family: Family
    processor: object
    renderer: Renderer
    train: list[Sample]
    eval: list[Sample]


def prepare_data(cfg: ExperimentConfig, run_dir: Path | None = None, check: bool = True) -> PreparedData:
    """Processor and checked samples, without loading any weights. Skipped samples are listed in run_dir
    (default: the run's output folder)."""
    run_dir = Path(cfg.train.output_dir) if run_dir is None else run_dir
    family = resolve_family(cfg.model.name, cfg.model.family)
    processor = load_processor(cfg.model.name, family, cfg.model.min_pixels, cfg.model.max_pixels)
    renderer = Renderer(processor, family, cfg.data.system_turns, cfg.data.max_length)

    def checked(users_spec) -> list[Sample]:
        read = read_samples(cfg.data.path, parse_users(users_spec))
        samples = read.samples[: cfg.data.max_samples] if cfg.data.max_samples else read.samples
        if not check:
            return samples
        report = validate(samples, renderer, cfg.data.max_length)
        report.problems[:0] = read.problems
        report.checked += len(read.problems)
        return enforce(report, cfg.data.on_error, run_dir)

    train = checked(cfg.data.train_users)
    eval_samples = checked(cfg.data.test_users) if cfg.train.eval and cfg.data.test_users is not None else []
    return PreparedData(family, processor, renderer, train, eval_samples)


class SampleList:
    """A map-style dataset over in-memory samples; rendering happens in the collator."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def build_trainer(
    model,
    renderer: Renderer,
    train_samples: list[Sample],
    samples_per_step: int,
    eval_samples: list[Sample] | None = None,
    processor=None,
    **arguments,
):
    """An HF Trainer over pigg samples: rendering happens in the collator (so columns must be kept),
    and progress is pigg's one-line-per-log ProgressCallback instead of the Trainer's printer."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from pigg.train.callbacks import ProgressCallback

    args = TrainingArguments(
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        **arguments,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=SampleList(train_samples),
        eval_dataset=SampleList(eval_samples) if eval_samples else None,
        data_collator=renderer.collate,
        processing_class=processor,
        callbacks=[ProgressCallback(samples_per_step)],
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _precision(cfg: ExperimentConfig):
    import torch

    cuda = torch.cuda.is_available()
    if cfg.train.bf16 is True and not (cuda and torch.cuda.is_bf16_supported()):
        raise ConfigError("train.bf16=true needs a GPU with bfloat16 support; use train.bf16=auto")
    if cfg.model.dtype != "auto":
        dtype = getattr(torch, cfg.model.dtype)
    elif cuda and torch.cuda.is_bf16_supported() and cfg.train.bf16 is not False:
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    return cuda, dtype


@dataclass
class TrainResult:
    summary: dict  # also written to RUN/pigg_run.json
    model: object  # the trained model in memory (a PeftModel for LoRA)


def train(cfg: ExperimentConfig, log_dir: str | Path | None = None) -> TrainResult:
    """Run the training described by `cfg` and save the run folder."""
    import torch
    from transformers import set_seed

    from pigg.models.loading import load_model
    from pigg.models.trainable import apply_method, trainable_line
    from pigg.train.callbacks import tee_output

    run_dir = Path(cfg.train.output_dir)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    log_path = Path(log_dir or cfg.train.log_dir) / f"{cfg.name}_{cfg.train.method}_{stamp}.log"
    with tee_output(log_path):
        print(f"pigg train: run '{cfg.name}', method {cfg.train.method}, model {cfg.model.name}")
        print(f"log file: {log_path}")
        cuda, dtype = _precision(cfg)
        if cuda:
            print(f"GPUs: {torch.cuda.device_count()} ({torch.cuda.get_device_name(0)}), dtype {dtype}")
        else:
            print(f"No GPU found: training on CPU in {str(dtype).removeprefix('torch.')}")
        set_seed(cfg.train.seed)

        started = time.perf_counter()
        data = prepare_data(cfg, run_dir)
        print(
            f"data: {len(data.train)} training samples from users {cfg.data.train_users}"
            + (f", {len(data.eval)} eval samples" if data.eval else "")
            + f" (checked in {time.perf_counter() - started:.1f}s)"
        )

        spread = (
            cuda
            and torch.cuda.device_count() > 1
            and cfg.train.method == "full"
            and "WORLD_SIZE" not in os.environ
        )
        model = load_model(cfg.model.name, dtype, "auto" if spread else None, cfg.model.attn_implementation)
        model = apply_method(model, data.family, cfg.train.method, cfg.lora, cfg.vision.method, cfg.aligner)
        print(trainable_line(model))

        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_CONFIG).write_text(cfg.to_yaml())
        trainer = build_trainer(
            model,
            data.renderer,
            data.train,
            cfg.train.batch_size * cfg.train.grad_accum,
            eval_samples=data.eval,
            processor=data.processor,
            output_dir=str(run_dir),
            learning_rate=cfg.train.learning_rate,
            num_train_epochs=cfg.train.epochs,
            max_steps=cfg.train.max_steps,
            per_device_train_batch_size=cfg.train.batch_size,
            per_device_eval_batch_size=cfg.train.batch_size,
            gradient_accumulation_steps=cfg.train.grad_accum,
            warmup_steps=cfg.train.warmup_steps,
            weight_decay=cfg.train.weight_decay,
            lr_scheduler_type=cfg.train.lr_scheduler,
            max_grad_norm=cfg.train.max_grad_norm,
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            use_cpu=not cuda,
            activation_checkpointing=cfg.train.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False},
            save_strategy="steps",
            save_steps=cfg.train.save_steps,
            save_total_limit=cfg.train.save_total_limit,
            eval_strategy="steps" if data.eval else "no",
            eval_steps=cfg.train.save_steps if data.eval else None,
            logging_steps=cfg.train.logging_steps,
            logging_first_step=True,
            report_to=cfg.train.report_to or "none",
            seed=cfg.train.seed,
            dataloader_num_workers=cfg.train.num_workers,
        )
        result = trainer.train()
        trainer.save_model(str(run_dir))
        losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
        summary = {
            "run": cfg.name,
            "method": cfg.train.method,
            "base_model": cfg.model.name,
            "family": data.family.name,
            "train_samples": len(data.train),
            "steps": trainer.state.global_step,
            "train_seconds": round(time.perf_counter() - started, 1),
            "first_loss": losses[0][1] if losses else None,
            "last_loss": losses[-1][1] if losses else None,
            "mean_train_loss": result.training_loss,
            "losses": losses,
            "log_file": str(log_path),
        }
        (run_dir / RUN_SUMMARY).write_text(json.dumps(summary, indent=2))
        print(
            f"done: {summary['steps']} steps in {summary['train_seconds']}s; loss {summary['first_loss']:.4f} "
            f"-> {summary['last_loss']:.4f}; saved to {run_dir}"
        )
        return TrainResult(summary, trainer.model)
