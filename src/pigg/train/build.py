"""What a training run is built from, shared by `pigg train` (train.run), `pigg plan` and `pigg bench`:
the run folder's names, the processes, the checked data, the precision, and the model and Trainer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from pigg.config import ExperimentConfig
from pigg.data.readers.rows import ReadResult
from pigg.data.render import Renderer
from pigg.data.sample import Sample
from pigg.data.validate import enforce, validate
from pigg.errors import ConfigError, DataError
from pigg.extras import EXTRAS, installed, require
from pigg.models.families import Family
from pigg.models.loading import load_processor, resolve_family
from pigg.recipes import deepspeed_config

RUN_SUMMARY = "pigg_run.json"
RUN_CONFIG = "pigg_config.yaml"
# Which start of a scheduler job this is (`pigg sbatch` sets JOBID.RESTART); written into the summary so a
# script reads a stop of its own start, never one an earlier job left.
ATTEMPT_ENV = "PIGG_JOB_ATTEMPT"
ATTEMPT_KEY = "job_attempt"


def select_gpus(gpus: str | None) -> None:
    """Restrict CUDA to `gpus` ("0" or "0,1"); must run before CUDA initialises, as the CLI does."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus


def process_rank() -> tuple[int, int]:
    """(global rank, world size) as the launcher set them (torchrun, accelerate launch, deepspeed); (0, 1)
    in a plain process. Read from the environment, so it is known before any process group starts."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def end_process_group() -> None:
    """End a finished run's process group (under torchrun): every rank waits for the others at a barrier,
    then the group is destroyed. Left to interpreter exit, gloo's threads can be torn down while still
    running and a rank aborts ("terminate called without an active exception", SIGABRT: seen once in
    about twenty stopped 2-rank runs)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@dataclass
class PreparedData:
    family: Family
    processor: object
    renderer: Renderer
    train: list[Sample]
    eval: list[Sample]
    # (text, image) tokens of each training sample, as validation measured them (None: not checked)
    train_tokens: list[tuple[int, int]] | None = None

    def tokens(self) -> list[tuple[int, int]]:
        """Per training sample (text, image) tokens; measured now when the data was loaded unchecked."""
        if self.train_tokens is None:
            self.train_tokens = validate(self.train, self.renderer, self.renderer.max_length).tokens
        return self.train_tokens

    def head(self, n: int) -> PreparedData:
        """The first `n` training samples (and their token counts) only."""
        tokens = self.train_tokens[:n] if self.train_tokens is not None else None
        return replace(self, train=self.train[:n], train_tokens=tokens)


def load_renderer(cfg: ExperimentConfig) -> tuple[Family, object, Renderer]:
    """The model's family, its processor as the config sets it up, and the Renderer built on them."""
    family = resolve_family(cfg.model.name, cfg.model.family)
    processor = load_processor(cfg.model.name, family, cfg.model.min_pixels, cfg.model.max_pixels)
    from pigg.data.image_cache import image_cache_for

    cache = image_cache_for(cfg.data.image_cache, processor.image_processor, family)
    renderer = Renderer(processor, family, cfg.data.system_turns, cfg.data.max_length, cache)
    return family, processor, renderer


def read_data(cfg: ExperimentConfig, path: str, users_spec) -> ReadResult:
    """The samples of `path` as the config's task reads them (grounding data selected by user,
    classification rows turned into chat samples, ...)."""
    from pigg.tasks import task_for

    return task_for(cfg).read(path, users_spec)


def prepare_data(
    cfg: ExperimentConfig, run_dir: Path | None = None, check: bool = True, purpose: str = "train"
) -> PreparedData:
    """Processor and checked samples, without loading any weights. Skipped samples are listed in run_dir
    (default: the run's output folder); `purpose` (train, evaluate) words the messages."""
    from pigg.tasks import task_for

    run_dir = Path(cfg.train.output_dir) if run_dir is None else run_dir
    task_for(cfg)  # an unknown task is refused before the processor loads
    family, processor, renderer = load_renderer(cfg)

    def checked(users_spec, path: str = cfg.data.path) -> tuple[list[Sample], list[tuple[int, int]] | None]:
        read = read_data(cfg, path, users_spec)
        samples = read.samples[: cfg.data.max_samples] if cfg.data.max_samples else read.samples
        if not check:
            return samples, None
        report = validate(samples, renderer, cfg.data.max_length)
        report.problems[:0] = read.problems
        report.checked += len(read.problems)
        writer = run_dir if process_rank()[0] == 0 else None  # one process writes the skipped list
        return enforce(report, cfg.data.on_error, writer, purpose), report.tokens

    train, tokens = checked(cfg.data.train_users)
    what = "training samples" if purpose == "train" else "samples to evaluate"
    if not train and not task_for(cfg).by_users:
        raise DataError(f"no {what} in {cfg.data.path}")
    if not train:
        raise DataError(
            f"no {what}: data.train_users={cfg.data.train_users} selects none in "
            f"{cfg.data.path}; check the users and that their files hold samples"
        )
    eval_samples: list[Sample] = []
    if cfg.train.eval and cfg.data.eval_fraction:
        held = held_out(len(train), cfg.data.eval_fraction, cfg.train.seed)
        eval_samples = [s for i, s in enumerate(train) if i in held]
        train = [s for i, s in enumerate(train) if i not in held]
        tokens = [t for i, t in enumerate(tokens) if i not in held] if tokens is not None else None
    elif cfg.train.eval and cfg.data.eval_path is not None:
        eval_samples, _ = checked(None, cfg.data.eval_path)
    elif cfg.train.eval and cfg.data.test_users is not None:
        eval_samples, _ = checked(cfg.data.test_users)
    elif cfg.train.eval:
        raise ConfigError(
            "train.eval=true needs data.eval_path, data.test_users or data.eval_fraction to evaluate on"
        )
    return PreparedData(family, processor, renderer, train, eval_samples, tokens)


def held_out(count: int, fraction: float, seed: int) -> set[int]:
    """Indices of a seeded random `fraction` of `count` samples (at least one), held out for evaluation."""
    import random

    order = list(range(count))
    random.Random(seed).shuffle(order)
    return set(order[: max(1, round(fraction * count))])


def precision(cfg: ExperimentConfig):
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


def checkpoint_bytes(model, method: str) -> int:
    """About what a checkpoint holds: the saved weights (all of them for full training, the trainable
    ones for an adapter) and AdamW's two float32 moments per trainable parameter."""
    from pigg.models.trainable import count_parameters

    trainable, total = count_parameters(model)
    element = next(model.parameters()).element_size()
    return (total if method == "full" else trainable) * element + trainable * 8


def _workers(setting: str | int) -> int:
    if setting != "auto":
        return int(setting)
    return max(0, min(8, usable_cpus() - 1))


def usable_cpus() -> int:
    """The CPUs this process may run on: a SLURM job's allocation or a taskset, not the whole machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def check_approach(cfg: ExperimentConfig, cuda: bool) -> None:
    """Refuse, before any weights load, an approach this machine or launch cannot run as asked: pigg never
    reports one approach while running another (the Trainer on CPU silently runs DDP when asked for FSDP)."""
    if cfg.train.stage == "grpo":
        from pigg.train.grpo import check_grpo

        check_grpo(cfg)

    parallel, (_, world) = cfg.train.parallel, process_rank()
    for variable, approach in (("ACCELERATE_USE_FSDP", "fsdp"), ("ACCELERATE_USE_DEEPSPEED", "deepspeed")):
        if os.environ.get(variable, "false").lower() == "true" and parallel != approach:
            raise ConfigError(
                f"launched by accelerate with {approach} ({variable}=true) but train.parallel={parallel}; "
                f"set train.parallel={approach} so the recipe says what runs"
            )
    if parallel == "fsdp" and not cuda:
        raise ConfigError(
            "train.parallel=fsdp shards over CUDA GPUs and none is visible; on CPU the HF Trainer "
            "(accelerate) would quietly run DDP instead, so pigg refuses. Use train.parallel=ddp here"
        )
    if parallel == "deepspeed":
        deepspeed_config(cfg.train.deepspeed)  # exists, or names pigg's zero2 / zero3
        if not cuda:
            raise ConfigError(
                f"train.deepspeed={cfg.train.deepspeed} needs a CUDA GPU, and none is visible; run on a GPU "
                "machine (`pigg train CONFIG --nproc N`), or set train.parallel=ddp to train without it"
            )
        require("deepspeed", "train.parallel=deepspeed")
    if parallel == "model":
        if world > 1:
            raise ConfigError(
                "train.parallel=model spreads one process's model over the GPUs; start it without --nproc "
                f"(this launch has {world} processes). For several processes use ddp or fsdp"
            )
        if not cuda:
            raise ConfigError(
                "train.parallel=model splits the layers over GPUs and none is visible; "
                "use train.parallel=ddp on CPU"
            )
    if cfg.model.quantization:
        require("qlora", "model.quantization=nf4 (QLoRA)")
        if parallel in ("fsdp", "deepspeed"):
            raise ConfigError(
                f"model.quantization=nf4 with train.parallel={parallel} is not supported; QLoRA runs "
                "with ddp (one process per GPU) or model"
            )


def _device_map(cfg: ExperimentConfig, family: Family, cuda: bool, dtype):
    """Where from_pretrained puts the weights: the balanced layer placement for model parallel, this
    process's GPU for a quantized model (bitsandbytes quantizes while loading), else the Trainer's choice."""
    import torch

    if cfg.train.parallel == "model":
        from pigg.models.params import meta_model
        from pigg.models.placement import parse_memory, place_layers, placement_units
        from pigg.models.trainable import apply_method

        meta = apply_method(
            meta_model(cfg.model.name), family, cfg.llm_method, cfg.lora, cfg.vision.method, cfg.aligner,
            vision_blocks=cfg.vision.blocks, llm_layers=cfg.llm.layers,
        )  # fmt: skip
        devices = list(range(torch.cuda.device_count()))
        if cfg.train.max_memory_per_gpu:
            caps = {d: parse_memory(cfg.train.max_memory_per_gpu) for d in devices}
        else:
            caps = {d: torch.cuda.mem_get_info(d)[0] for d in devices}
        element = torch.finfo(dtype).bits // 8
        placement = place_layers(placement_units(meta, family, element), devices, caps)
        print(
            "model parallel: "
            + ", ".join(f"GPU {d} {b / 2**30:.1f} GiB" for d, b in placement.bytes_per_device.items())
            + " (weights, gradients, optimizer states)"
        )
        return placement.device_map
    if cfg.model.quantization and cuda:
        return {"": int(os.environ.get("LOCAL_RANK", 0))}
    return None


def _quantization(cfg: ExperimentConfig, family: Family, dtype):
    """bitsandbytes' NF4 with double quantization for the LLM's linear layers; the vision side, the
    aligner (outside the vision tower in Idefics3) and lm_head stay in `dtype` (paths from the family)."""
    if not cfg.model.quantization:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=[m for m in (family.vision_tower, *family.projector, family.lm_head) if m],
    )


def _fsdp_arguments(cfg: ExperimentConfig, model, family: Family) -> dict:
    """TrainingArguments for FSDP2: each LLM decoder layer and vision block its own shard unit; sharded
    checkpoints (every rank writes its part); the final model is gathered on rank 0 (see train())."""
    if cfg.train.parallel != "fsdp":
        return {}
    from pigg.models.placement import shard_unit_classes

    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "fsdp_version": 2,
            "transformer_layer_cls_to_wrap": shard_unit_classes(model, family),
            "reshard_after_forward": True,
            "state_dict_type": "SHARDED_STATE_DICT",
        },
    }


def attention(setting: str | None, cuda: bool) -> str | None:
    """What `model.attn_implementation` asks transformers for: `auto` is flash_attention_2 where it can
    run (CUDA and flash-attn installed) and transformers' default otherwise."""
    if setting != "auto":
        return setting
    return "flash_attention_2" if cuda and installed("flash_attn") else None


def _checkpointing(cfg: ExperimentConfig, cuda: bool) -> bool:
    setting = cfg.train.gradient_checkpointing
    return cuda if setting == "auto" else setting


def liger_enabled(setting: str | bool, cuda: bool) -> bool:
    """Whether to apply Liger's kernels: `auto` uses them where they can run (CUDA, package installed);
    asking for them where they cannot is an error rather than a silent fallback."""
    if setting is False:
        return False
    if setting == "auto":
        return cuda and all(installed(m) for m in EXTRAS["liger"])
    if not cuda:
        raise ConfigError(
            "train.liger_kernel=true needs a CUDA GPU (Liger's kernels are written in Triton, which has no "
            "CPU backend); use train.liger_kernel=auto"
        )
    require("liger", "train.liger_kernel=true")
    return True


def build_model(cfg: ExperimentConfig, data: PreparedData, dtype, cuda: bool):
    """The model as the config trains it: loaded (from `model.init_from`'s weights, its adapters merged,
    when set), quantized, and its parts set to train by their methods."""
    import torch

    from pigg.models.loading import adapter_chain, load_model, merge_adapters
    from pigg.models.trainable import apply_method

    weights, adapters = adapter_chain(cfg.model.init_from) if cfg.model.init_from else (cfg.model.name, [])
    if adapters and cfg.train.stage == "grpo" and cfg.rl.beta > 0 and not cfg.saves_adapter:
        # TRL rebuilds the KL's reference from the weights' folder, which would miss the merged adapters
        raise ConfigError(
            f"rl.beta={cfg.rl.beta} with full training from the LoRA run {cfg.model.init_from}: merge it first "
            "(pigg merge RUN --out FOLDER) and set model.init_from=FOLDER, or train LoRA, or set rl.beta=0"
        )
    model = load_model(
        weights,
        dtype,
        _device_map(cfg, data.family, cuda, dtype),
        attention(cfg.model.attn_implementation, cuda),
        _quantization(cfg, data.family, dtype),
    )
    model = merge_adapters(model, adapters)  # an SFT run's LoRA, merged: the new training starts from it
    if cfg.model.quantization and dtype == torch.float16:
        from peft import prepare_model_for_kbit_training

        # fp16 overflows without it: peft upcasts every unquantized weight to float32. In bf16 (and fp32)
        # pigg leaves them as loaded: on the 8B the upcast costs ~7 GB (embeddings, lm_head, vision tower,
        # all frozen) and buys nothing; checkpointing is the Trainer's, non-reentrant, needing no input grads
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=_checkpointing(cfg, cuda))
    model = apply_method(
        model,
        data.family,
        cfg.llm_method,
        cfg.lora,
        cfg.vision.method,
        cfg.aligner,
        vision_blocks=cfg.vision.blocks,
        llm_layers=cfg.llm.layers,
    )
    if hasattr(model, "peft_config"):
        # saved adapters name the weights they train on: the run they continue (loading one then merges that
        # run's adapters first) or the base model; a local folder by its absolute path, or the run would
        # load only from the folder it was trained in
        start = cfg.model.init_from or cfg.model.name
        named = str(Path(start).resolve()) if Path(start).is_dir() else start
        for config in model.peft_config.values():
            config.base_model_name_or_path = named
    return model


def training_arguments(cfg: ExperimentConfig, data: PreparedData, model, run_dir: Path, dtype, cuda: bool):
    """The Trainer's arguments (TrainingArguments or TRL's GRPOConfig) as the config sets them."""
    import torch

    return dict(
        output_dir=str(run_dir),
        learning_rate=cfg.train.learning_rate,
        num_train_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps,
        per_device_train_batch_size=cfg.train.batch_size,
        per_device_eval_batch_size=cfg.train.batch_size,
        gradient_accumulation_steps=cfg.train.grad_accum,
        warmup_steps=cfg.train.warmup_ratio if cfg.train.warmup_ratio is not None else cfg.train.warmup_steps,
        weight_decay=cfg.train.weight_decay,
        lr_scheduler_type=cfg.train.lr_scheduler,
        max_grad_norm=cfg.train.max_grad_norm,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not cuda,
        activation_checkpointing=_checkpointing(cfg, cuda),
        activation_checkpointing_kwargs={"use_reentrant": False},
        save_strategy="steps",
        save_steps=cfg.train.save_steps,
        save_total_limit=cfg.train.save_total_limit,
        eval_strategy="steps" if data.eval else "no",
        eval_steps=(cfg.train.eval_steps or cfg.train.save_steps) if data.eval else None,
        deepspeed=str(deepspeed_config(cfg.train.deepspeed)) if cfg.train.deepspeed else None,
        # Every trained parameter gets a gradient at every step (text-only batches of a vision-language
        # model run the vision tower on a filler image: Renderer.vision_filler), so DDP need not search
        # the graph for unused ones.
        ddp_find_unused_parameters=False,
        **_fsdp_arguments(cfg, model, data.family),
        torch_compile=cfg.train.torch_compile,
        use_liger_kernel=liger_enabled(cfg.train.liger_kernel, cuda),
        train_sampling_strategy="group_by_length" if cfg.train.group_by_length else "random",
        logging_steps=cfg.train.logging_steps,
        logging_first_step=True,
        seed=cfg.train.seed,
        dataloader_num_workers=_workers(cfg.train.num_workers),
        # Not persistent: a resumed run then draws worker seeds from the RNG at the same points as a
        # straight one, which keeps resume exact (persistent workers skip a draw per epoch).
        dataloader_persistent_workers=False,
        dataloader_pin_memory=cuda,
    )


def build_run(cfg: ExperimentConfig, data: PreparedData, run_dir: Path, dtype, cuda: bool, **overrides):
    """The model as the config trains it, and the trainer that trains it (pigg's for SFT, TRL's GRPO for
    `train.stage: grpo`); `overrides` replace TrainingArguments (`pigg plan` runs a few steps into a
    scratch folder this way)."""
    from pigg.data.packing import TrainingCollator, rope_index_of
    from pigg.train.trainer import build_trainer

    model = build_model(cfg, data, dtype, cuda)
    arguments = training_arguments(cfg, data, model, run_dir, dtype, cuda)
    arguments.update(overrides)
    board = "tensorboard" in cfg.train.report_to
    if cfg.train.stage == "grpo":
        from pigg.train.grpo import build_grpo_trainer

        return model, build_grpo_trainer(cfg, data, model, arguments, board)
    collator = TrainingCollator(data.renderer)
    if cfg.data.packing and data.family.image_sizing != "qwen":
        raise ConfigError(f"data.packing is not supported for {data.family.name} yet; set data.packing=false")
    if cfg.data.packing:
        rope_index = rope_index_of(model) if data.family.has_vision else None
        collator = TrainingCollator(data.renderer, rope_index, cfg.data.pack_length or cfg.data.max_length)
    lengths = [t + i for t, i in data.tokens()] if cfg.train.group_by_length else None
    trainer = build_trainer(
        model,
        data.renderer,
        data.train,
        cfg.train.batch_size * cfg.train.grad_accum * process_rank()[1],
        eval_samples=data.eval,
        processor=data.processor,
        tensorboard_dir=Path(arguments["output_dir"]) / "tensorboard" if board else None,
        family=data.family,
        collator=collator,
        sample_lengths=lengths,
        logits=cfg.train.logits,
        learning_rates={
            "llm": cfg.train.learning_rate,
            "vision": cfg.train.vision_lr or cfg.train.learning_rate,
            "aligner": cfg.train.aligner_lr or cfg.train.learning_rate,
        },
        report_to="none",
        **arguments,
    )
    return model, trainer


def timed_run(cfg, data, scratch: Path, **overrides):
    """(model, trainer, timer): `cfg`'s model and trainer writing to `scratch`, with a StepTimer and no
    progress lines; `overrides` replace TrainingArguments (max_steps, save_steps, ...)."""
    from pigg.train.callbacks import ProgressCallback
    from pigg.train.measure import StepTimer

    cuda, dtype = precision(cfg)
    check_approach(cfg, cuda)  # `pigg plan` and `pigg bench` come here, not through train()
    model, trainer = build_run(cfg, data, scratch, dtype, cuda, **overrides)
    trainer.remove_callback(ProgressCallback)  # the report is the output
    timer = StepTimer()
    trainer.add_callback(timer)
    return model, trainer, timer
