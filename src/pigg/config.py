"""The experiment schema: YAML mirrored one to one by typed sections, validated before anything heavy loads.

Every problem found is reported at once, by dotted key, with the nearest valid key suggested for typos.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pigg.errors import ConfigError
from pigg.recipes import resolve_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


UserSpec = int | str | list[int | str] | None


def parse_users(spec: UserSpec) -> list[int] | None:
    """Turn "11-83", "1-3,7", 5, [1, "4-6"] or "all"/None into a sorted id list (None means every user)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return None
    parts: list[int | str] = spec if isinstance(spec, list) else [spec]
    ids: set[int] = set()
    for part in parts:
        for piece in str(part).split(","):
            piece = piece.strip()
            if not piece:
                continue
            match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", piece)
            if match:
                lo, hi = int(match.group(1)), int(match.group(2))
                if lo > hi:
                    raise ValueError(f"user range {piece!r} runs backwards")
                ids.update(range(lo, hi + 1))
            elif piece.isdigit():
                ids.add(int(piece))
            else:
                raise ValueError(
                    f"cannot read user selection {piece!r}; use ids and ranges like '11-83' or '1,4,7'"
                )
    return sorted(ids)


def parse_duration(text: str | int | float) -> float:
    """Seconds from "8h", "90m", "1h30m", "45s", "2d", "7:30:00" (h:m:s, as SLURM writes), "30:00" or 3600."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        clock = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", raw)
        units = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", raw)
        if clock:
            days, a, b, c = clock.groups()
            hms = (int(a), int(b), int(c)) if c is not None else (0, int(a), int(b))
            seconds = int(days or 0) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
        elif re.fullmatch(r"\d+(?:\.\d+)?", raw):
            seconds = float(raw)
        elif units and re.fullmatch(r"(?:\s*\d+(?:\.\d+)?\s*[dhms])+\s*", raw):
            scale = {"d": 86400, "h": 3600, "m": 60, "s": 1}
            seconds = sum(float(n) * scale[u] for n, u in units)
        else:
            raise ValueError(f"cannot read the duration {text!r}; write e.g. 8h, 90m, 1h30m or 7:30:00")
    if seconds <= 0:
        raise ValueError(f"the duration {text!r} must be positive")
    return seconds


class ModelSection(_Section):
    name: str = Field(description="hub id (Qwen/Qwen3-VL-8B-Instruct) or a local folder")
    family: Literal["auto", "qwen3_vl", "qwen2_5_vl", "qwen2", "qwen3", "idefics3", "idefics2"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # None: transformers' default (sdpa); auto: flash_attention_2 where it can run (CUDA and the flash-attn
    # package; packed rows then become variable-length boundaries), else the default; flash_attention_2
    # without it is an error from transformers at load time.
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    # QLoRA (seed 003): the LLM's linear layers loaded as bitsandbytes 4-bit NF4 with double quantization,
    # computed in bf16 (fp32 on CPU); the vision tower, aligner, embeddings and lm_head stay unquantized.
    # Needs LoRA on the LLM: quantized weights cannot be trained themselves.
    quantization: Literal["nf4"] | None = None
    # a pigg run (adapter or full weights) to start from: `train.stage: grpo` after SFT
    init_from: str | None = None


class DataSection(_Section):
    path: str = Field(
        description="a folder of user_<id>.pkl files or a .jsonl file; for task: classify also .csv, "
        ".tsv or .parquet"
    )
    # What data.path holds: pigg (user_<id>.pkl folders, pigg JSONL), llamafactory (sharegpt / openai /
    # alpaca JSON or JSONL with <image> placeholders, or a dataset_info.json), swift (ms-swift JSONL), hf
    # (save_to_disk folder, parquet, arrow), screenspot (ScreenSpot v1/v2/Pro annotations); auto: from
    # its content (docs/formats.md).
    format: Literal["auto", "pigg", "llamafactory", "swift", "hf", "screenspot"] = "auto"
    # data.format=llamafactory with a dataset_info.json registering several datasets: which one.
    dataset: str | None = None
    # The screenshots of ScreenSpot annotations (default: screenspot_imgs/ or images/ where the
    # benchmarks put them).
    images: str | None = None
    # A second file of the same kind, held out: evaluation during training (train.eval) and `pigg eval`
    # of a classification run read it (grounding data selects data.test_users instead).
    eval_path: str | None = None
    train_users: UserSpec = "all"
    test_users: UserSpec = None
    max_length: int = Field(4096, gt=0)
    # Seed 000 rewrote system turns as user turns; Qwen-VL templates render a system turn natively.
    system_turns: Literal["auto", "keep", "to_user"] = "auto"
    on_error: Literal["stop", "skip"] = "stop"
    # Evaluation during training (train.eval) uses test_users, or, when set, this fraction of the training
    # samples held out (seeded by train.seed).
    eval_fraction: float | None = Field(None, gt=0, lt=1)
    # Pack each micro-batch's samples into rows of at most pack_length tokens (default: max_length),
    # without attention across samples; padding-free batches with the same loss. Off by default: on CPU
    # the block-diagonal mask costs more than the little padding of similar-length samples saves.
    packing: bool = False
    pack_length: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _samples_fit_a_pack(self) -> DataSection:
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ValueError(
                f"data.pack_length={self.pack_length} is below data.max_length={self.max_length}: "
                "a sample of max_length tokens would fit no row"
            )
        return self

    max_samples: int | None = Field(None, gt=0)
    # Where each screenshot is kept decoded and resized to the processor's pixel budget (one uncompressed
    # .npy per image and setting), filled on first use: later epochs and runs skip the PNG decode and the
    # resize (measured 1.43x on CPU, docs/benchmarks.md), with exactly the same pixel values. Costs
    # width x height x 3 bytes per resized screenshot. auto: $PIGG_CACHE/images or ~/.cache/pigg/images;
    # a folder; or null to turn it off.
    image_cache: str | bool | None = "auto"

    @field_validator("train_users", "test_users")
    @classmethod
    def _users_readable(cls, value: UserSpec) -> UserSpec:
        parse_users(value)
        return value


class LoraSection(_Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    bias: Literal["none", "all", "lora_only"] = "none"


class TrainSection(_Section):
    method: Literal["lora", "full"] = "lora"
    # sft: imitation of the answers; grpo: reinforcement with the task's rewards (the rl section)
    stage: Literal["sft", "grpo"] = "sft"
    output_dir: str = "runs/run"
    learning_rate: float = Field(1e-6, gt=0, description="the LLM's; the other parts default to it")
    vision_lr: float | None = Field(None, gt=0, description="the vision blocks' (seed 002's vit_lr)")
    aligner_lr: float | None = Field(None, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="-1: run for `epochs`")
    # pigg's speed defaults (measured in docs/benchmarks.md): micro-batches of 8 without accumulation;
    # seed 000's recipe (batch 1 x accumulation 8, checkpointing on) is configs/global_lora.yaml.
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="overrides warmup_steps when set")
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    bf16: Literal["auto"] | bool = "auto"
    # auto: off on CPU (memory is plentiful there; recomputing activations only costs time), on with CUDA,
    # where running out of memory loses the run.
    gradient_checkpointing: Literal["auto"] | bool = "auto"
    save_steps: int = Field(500, gt=0)
    save_total_limit: int = Field(3, gt=0)
    logging_steps: int = Field(10, gt=0)
    eval: bool = False
    eval_steps: int | None = Field(None, gt=0, description="default: save_steps")
    # Batches of similar lengths (less padding), shuffled by mega-batches (HF's LengthGroupedSampler).
    group_by_length: bool = False
    # torch.compile the model (the Trainer's torch_compile); measured in docs/benchmarks.md.
    torch_compile: bool = False
    # Liger's Triton kernels (fused linear cross-entropy, which never materialises the 152k-vocabulary
    # logits, RMSNorm, RoPE) through the Trainer's use_liger_kernel. auto: on with CUDA when liger-kernel
    # is installed (Triton has no CPU backend). Off by default until the GPU bench (path default+liger)
    # has measured it: pigg's defaults are what measurably helps.
    liger_kernel: Literal["auto"] | bool = False
    # Where the output layer (152k logits per position on Qwen) runs, docs/benchmarks.md: labelled: only at
    # trained positions (an answer's ~10 tokens of ~1,000), same loss and gradients; chunked: the same,
    # its cross-entropy a chunk at a time, recomputed in backward; all: every position (the stock loss,
    # or Liger's fused kernel when on); auto: all with Liger, else labelled, chunked above 2**28 logits
    # (1 GiB of float32) a micro-batch: chunking saves memory at some speed (never under FSDP/DeepSpeed).
    logits: Literal["auto", "labelled", "chunked", "all"] = "auto"
    # How several devices share the work (docs/approaches.md). ddp: one process per device, each with a
    # whole model (with one process: plain training); fsdp: one process per device, parameters, gradients
    # and optimizer states sharded per LLM layer and vision block (FSDP2, CUDA); deepspeed: ZeRO from
    # train.deepspeed (CUDA); model: one process, the layers spread over the visible GPUs (seed 003's MP).
    # Processes are started by `pigg train --nproc N`, torchrun or accelerate launch.
    parallel: Literal["ddp", "fsdp", "deepspeed", "model"] = "ddp"
    # DeepSpeed config: pigg's zero2 or zero3 (`pigg recipes`), or a JSON file; with train.parallel=deepspeed.
    deepspeed: str | None = None
    # train.parallel=model: the most each GPU may hold ("70GiB"); default: what each GPU has free.
    max_memory_per_gpu: str | None = None
    seed: int = 42
    # Dataloader processes that decode and resize screenshots while the model computes. auto: one per
    # CPU core left over after the training process, at most 8 (measured: image preprocessing is most of
    # a small model's step).
    num_workers: Literal["auto"] | int = "auto"
    log_dir: str = "logs"
    # TensorBoard event files go to RUN/tensorboard; [] turns them off.
    report_to: list[Literal["tensorboard"]] = Field(default_factory=lambda: ["tensorboard"])
    # Wall-clock budget of the job ("8h", "90m", "7:30:00"): a checkpoint is saved before it and the run
    # exits with code 75 and the command that resumes it.
    time_limit: str | None = None

    @field_validator("time_limit", mode="before")
    @classmethod
    def _duration_readable(cls, value: Any) -> str | None:
        if value is None:
            return None
        parse_duration(value)
        return str(value)

    @model_validator(mode="after")
    def _parallel_consistent(self) -> TrainSection:
        if self.deepspeed is not None and self.parallel != "deepspeed":
            raise ValueError(
                f"train.deepspeed={self.deepspeed} is set but train.parallel={self.parallel}; "
                "set train.parallel=deepspeed (or remove train.deepspeed)"
            )
        if self.parallel == "deepspeed" and self.deepspeed is None:
            raise ValueError(
                "train.parallel=deepspeed needs train.deepspeed: pigg's zero2 or zero3, or a DeepSpeed JSON file"
            )
        if self.logits == "chunked" and self.parallel in ("fsdp", "deepspeed"):
            raise ValueError(
                f"train.logits=chunked reads lm_head's weight outside its forward, which train.parallel="
                f"{self.parallel} shards; use train.logits=labelled (or auto)"
            )
        if self.max_memory_per_gpu is not None and self.parallel != "model":
            raise ValueError("train.max_memory_per_gpu applies to train.parallel=model only")
        return self

    @property
    def time_limit_seconds(self) -> float | None:
        return parse_duration(self.time_limit) if self.time_limit else None


class EvalSection(_Section):
    """How clicks are evaluated (`pigg eval`, `pigg personalize`, the demo)."""

    batch_size: int = Field(16, gt=0)
    # A click without a known box is right within this fraction of the screenshot diagonal.
    radius: float = Field(0.05, gt=0, le=1)
    max_new_tokens: int = Field(32, gt=0)


class PersonalizeSection(_Section):
    """Per-user LoRA adapters on top of a global run (`pigg personalize`)."""

    users: UserSpec = Field(None, description="whom to personalize; default: data.test_users")
    # sft: each adapter imitates the user's answers; grpo: it learns from the task's rewards on the user's
    # screens (TRL's GRPO, the rl section; batch_size then counts answers, rl.num_generations a prompt)
    stage: Literal["sft", "grpo"] = "sft"
    # Each user's samples are split into adapt and test parts, per kind, by this seed and fraction.
    adapt_fraction: float = Field(0.5, gt=0, lt=1)
    split_seed: int = 0
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    learning_rate: float = Field(1e-4, gt=0)
    max_steps: int = Field(100, gt=0)
    batch_size: int = Field(4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    # Replay against forgetting: this many samples of the global run's own training data per adapt sample
    # join each user's adaptation (seeded, different per user); 0 trains on the user's samples alone.
    replay_ratio: float = Field(0.0, ge=0)
    # skip: replay leaves out global samples asking exactly what one of the user's own adapt samples asks
    # (another user's "the usual" would teach another user's answer); keep: replay draws from all of them.
    replay_conflicts: Literal["skip", "keep"] = "skip"
    # per_pass: each pass over the user's samples replays global samples of its own (as much of the global
    # data as the steps can see); once: one draw, repeated every pass.
    replay_draw: Literal["per_pass", "once"] = "per_pass"
    # Distillation on the replayed samples: this weight times KL(global model || adapted model) over their
    # answer tokens joins the loss (pigg.train.distill); 0 trains on cross-entropy alone.
    distill: float = Field(0.0, ge=0)
    # A user whose accuracy on a kind other than their habits (or overall, without kinds) falls by more
    # than this below the global model's is flagged in the report as forgetting.
    forget_tolerance: float = Field(0.01, ge=0, le=1)
    # Data-efficiency curve: also train every user on only this many of their adapt samples (each budget
    # a fresh adapter, the test screens unchanged); e.g. [5, 10, 20, 40]. Empty: no curve.
    budgets: list[int] = Field(default_factory=list)

    @field_validator("budgets")
    @classmethod
    def _budgets_positive(cls, value: list[int]) -> list[int]:
        if any(b <= 0 for b in value):
            raise ValueError(f"budgets must be positive sample counts, not {value}")
        return sorted(set(value))

    @field_validator("users")
    @classmethod
    def _users_readable(cls, value: UserSpec) -> UserSpec:
        parse_users(value)
        return value


Selection = str | int


class VisionSection(_Section):
    """How the vision tower's blocks train (the aligner is its own part). Seed 000 keeps them frozen; seed
    002 trains the last 6 with LoRA; a random-weight tiny model must learn to see, so the demo trains all."""

    method: Literal["frozen", "full", "lora"] = "frozen"
    blocks: Selection = Field("all", description='"all", "last:6", "18-23" or "0,4,8-9"')


class LlmSection(_Section):
    """How the language model's decoder layers train. `auto` takes `train.method` (lora or full)."""

    method: Literal["auto", "frozen", "full", "lora"] = "auto"
    layers: Selection = Field("all", description='"all", "last:2", "34-35"; full+all includes embeddings')


class ClassifySection(_Section):
    """Text classification (seed 004, `task: classify`): how the rows of a table (CSV, TSV, parquet, or
    JSONL without "messages") become chat samples, and how answers are read. Chat rows ({"messages":
    [...]}) are taken as they are; their answer must name one of the labels."""

    labels: list[str] = Field(min_length=2, description="the classes, in the order of integer labels")
    # The text of a row: one column, or several joined by a space (AG News's title and description).
    text_column: str | list[str] = "text"
    label_column: str = "label"
    # An integer label is labels[value - label_base]: HF's ag_news counts from 0, the original CSV from 1.
    label_base: int = 0
    # Names for the columns of a CSV/TSV without a header row (the original AG News CSV).
    columns: list[str] | None = None
    system_prompt: str | None = None
    # The user turn; {text} is replaced by the row's text (appended after a blank line when absent).
    prompt: str = "Classify the following text:\n\n{text}"
    # What the model answers: json is seed 004's {"category":"World"}; bare is the label alone.
    answer: Literal["json", "bare"] = "json"
    key: str = "category"

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, value: list[str]) -> list[str]:
        folded = [v.strip().casefold() for v in value]
        if any(not v for v in folded):
            raise ValueError("a label is empty")
        if len(set(folded)) != len(folded):
            raise ValueError(f"labels {value} repeat one (compared case-insensitively)")
        return value


class RlSection(_Section):
    """`train.stage: grpo`: TRL's GRPO. Each prompt gets `num_generations` sampled answers, scored by the
    task's rewards (name: weight; default the task's own) and compared within their group."""

    num_generations: int = Field(4, description="answers sampled per prompt (2 or more)")
    max_completion_length: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0, description="weight of the KL to the starting model; 0 loads no reference")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    epsilon: float = Field(0.2, gt=0, description="the policy ratio's clip")
    rewards: dict[str, float] | None = None
    use_vllm: bool = False  # generation by vLLM on a GPU (colocate: in the training process)
    vllm_mode: Literal["colocate", "server"] = "colocate"


class ExperimentConfig(_Section):
    run_name: str | None = None
    # A task of pigg.tasks.TASKS: grounding, clicks on screenshots (seeds 000-003); classify, text
    # classification (seed 004), rows turned into chat samples by the classify section; describe, free-text
    # answers (seed 003). An unknown name is refused when a command starts, before any model loads.
    task: str = "grounding"
    model: ModelSection
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    vision: VisionSection = Field(default_factory=VisionSection)
    llm: LlmSection = Field(default_factory=LlmSection)
    # The aligner (projector) merges vision features into the LLM's space.
    aligner: Literal["frozen", "full", "lora"] = "frozen"
    eval: EvalSection = Field(default_factory=EvalSection)
    personalize: PersonalizeSection = Field(default_factory=PersonalizeSection)
    classify: ClassifySection | None = None
    rl: RlSection = Field(default_factory=RlSection)

    @model_validator(mode="after")
    def _task_has_its_section(self) -> ExperimentConfig:
        if self.task == "classify" and self.classify is None:
            raise ValueError("task: classify needs a classify section with at least classify.labels")
        if self.task != "classify" and self.classify is not None:
            raise ValueError("a classify section is set but task is grounding; set task: classify")
        return self

    @model_validator(mode="after")
    def _rl_groups_fit_the_batch(self) -> ExperimentConfig:
        if self.train.stage == "grpo":
            if self.train.eval:
                raise ValueError(
                    "train.eval=true with train.stage=grpo: a GRPO run logs its rewards; set "
                    "train.eval=false and evaluate the run with `pigg eval RUN`"
                )
            self._check_groups("train", self.train.batch_size, self.train.grad_accum)
        p = self.personalize
        if p.stage == "grpo":
            self._check_groups("personalize", p.batch_size, 1)
            if p.distill > 0:
                raise ValueError(
                    f"personalize.distill={p.distill} with personalize.stage=grpo: distillation is a term of "
                    "the SFT loss; set personalize.distill=0 (replay still works)"
                )
            if self.rl.beta > 0:
                raise ValueError(
                    f"rl.beta={self.rl.beta} with personalize.stage=grpo: a user's adapter starts at zero, "
                    "so its reference is the global model, which TRL cannot take from beside other users' "
                    "adapters yet; set rl.beta=0 (the adapter's small rank and steps keep it close)"
                )
        return self

    def _check_groups(self, section: str, batch: int, accum: int) -> None:
        n = self.rl.num_generations
        if n < 2:
            raise ValueError(
                f"rl.num_generations={n}: GRPO compares several answers to one prompt; set it to 2 or more "
                "(4 to 8 is usual)"
            )
        if (batch * accum) % n:
            fits = max(n, batch - batch % n)
            shape = f"{section}.batch_size ({batch})"
            if section == "train":
                shape = f"train.batch_size x train.grad_accum ({batch} x {accum})"
            raise ValueError(
                f"{shape} must be a multiple of rl.num_generations ({n}): a prompt's answers are generated "
                f"and compared together; set {section}.batch_size={fits} (it counts answers: {fits // n} "
                f"prompt(s) of {n} answers each)"
            )

    @model_validator(mode="after")
    def _quantized_parts_use_lora(self) -> ExperimentConfig:
        if self.model.quantization and self.llm_method != "lora":
            raise ValueError(
                f"model.quantization={self.model.quantization} (QLoRA) trains LoRA on a 4-bit LLM, but the "
                f"LLM's method is {self.llm_method}; set train.method=lora (4-bit weights cannot train)"
            )
        return self

    @property
    def llm_method(self) -> str:
        return self.train.method if self.llm.method == "auto" else self.llm.method

    @property
    def saves_adapter(self) -> bool:
        """Whether the run is a peft adapter (some part uses LoRA) rather than full weights."""
        return "lora" in (self.llm_method, self.vision.method, self.aligner)

    @property
    def name(self) -> str:
        return self.run_name or Path(self.train.output_dir).name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------- loading


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    keys = dotted.split(".")
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`key.sub=value` strings → (key, YAML-parsed value) pairs."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return pairs


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at a location of the schema, for 'did you mean' hints."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            break
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> tuple[str, str | None, str]:
    """(key, value given or None, what is wrong) for one pydantic error."""
    loc = tuple(str(p) for p in error["loc"])
    # Union types add the tried member to loc ("train.bf16.bool"): keep the user's key only.
    key_parts: list[str] = []
    for part in loc:
        key_parts.append(part)
        if part not in _valid_keys(tuple(key_parts[:-1])):
            if error["type"] != "extra_forbidden":
                key_parts.pop()
            break
    key = ".".join(key_parts) or "<root>"
    if error["type"] == "extra_forbidden":
        valid = _valid_keys(tuple(key_parts[:-1]))
        hint = difflib.get_close_matches(key_parts[-1], valid, n=1, cutoff=0.5)
        prefix = ".".join(key_parts[:-1])
        suggestion = f"; did you mean '{prefix + '.' if prefix else ''}{hint[0]}'?" if hint else ""
        return key, None, f"unknown key '{key}'{suggestion} (valid here: {', '.join(valid)})"
    if error["type"] == "missing":
        return key, None, f"missing required key '{key}'"
    return key, repr(error.get("input")), error["msg"]


def _problems(exc: ValidationError) -> list[str]:
    """One line per key; a union-typed key ("auto" | bool) gets its members' messages joined."""
    messages: dict[str, list[str]] = {}
    given: dict[str, str | None] = {}
    for error in exc.errors():
        key, value, text = _describe(error)
        given[key] = value
        if text not in messages.setdefault(key, []):
            messages[key].append(text)
    lines = []
    for key, texts in messages.items():
        if given[key] is None:
            lines.extend(texts)
        else:
            lines.append(f"'{key}': {' or '.join(texts)} (got {given[key]})")
    return sorted(lines)


def build_config(
    raw: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>"
) -> ExperimentConfig:
    """Validate a config tree plus dotted overrides; every problem is reported in one ConfigError."""
    tree = yaml.safe_load(yaml.safe_dump(raw)) or {}  # deep copy through plain types
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        problems = _problems(exc)
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source}: {len(problems)} problem(s) in the config:\n{lines}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML recipe (a file, or the name of a shipped one: `pigg recipes`), apply `key=value`
    overrides, validate; relative data/model paths stay as written."""
    path = resolve_config(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, train, lora)")
    return build_config(raw, overrides, source=str(path))
