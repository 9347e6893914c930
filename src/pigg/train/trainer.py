"""The one HF Trainer pigg builds, for global runs, per-user adapters and run planning.

What pigg adds to the stock Trainer: samples and rendering in the collator (columns kept), checkpoints that
appear under their final name only when complete, throughput (samples/s, tokens/s) in every training log
so the log file and TensorBoard carry it, and TensorBoard under the run folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from transformers import Trainer, TrainerCallback

from pigg.data.packing import STATS_KEY, TrainingCollator
from pigg.data.render import Renderer
from pigg.data.sample import Sample
from pigg.train.control import STAGING
from pigg.train.loss import causal_lm_loss, next_token_targets, output_layer, resolve_mode


class SampleList:
    """A map-style dataset over in-memory samples; rendering happens in the collator."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


class IgnoreStopSignals:
    """A DataLoader worker_init_fn: the worker ignores SIGTERM and SIGUSR1, then runs the one it wraps.

    SLURM sends SIGTERM to every process of a job (time limit, scancel, preemption), DataLoader workers
    included; torch's worker handler exits on a SIGTERM that its parent did not send, and the main process
    then fails with "DataLoader worker ... is killed by signal: Terminated" instead of saving. The main
    process decides (pigg.train.control saves and stops); its workers end when it ends them.
    """

    def __init__(self, then=None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)


class ForkAfterFeedersEnd:
    """Stands in for a DataLoader's `_get_iterator`: before the next pass forks its workers, wait for the
    previous pass's queue feeder threads to end.

    A DataLoader that is not persistent forks new workers on every pass, right after the last pass shut
    its queues, whose feeder threads are then still exiting. CPython 3.11 can deadlock the forked child
    when another thread is exiting at the moment of fork: the child waits forever in
    `_PyThreadState_DeleteExcept` for the thread-state lock the exiting thread held (seen here: a rank's
    new worker hung at fork in the second epoch of a resumed 2-process run, gdb on the child).
    """

    def __init__(self, loader):
        self.loader = loader
        self.queues: list = []  # the index queues of the last pass, fed by threads of this process

    def __call__(self):
        for queue in self.queues:
            feeder = getattr(queue, "_thread", None)
            if feeder is not None and getattr(queue, "_closed", False):
                feeder.join(timeout=30)
        iterator = type(self.loader)._get_iterator(self.loader)
        self.queues = list(getattr(iterator, "_index_queues", ()))
        return iterator


def _prepare_workers(loader):
    base = getattr(loader, "base_dataloader", loader)  # accelerate wraps the torch DataLoader
    if not isinstance(base.worker_init_fn, IgnoreStopSignals):  # eval loaders may be reused
        base.worker_init_fn = IgnoreStopSignals(base.worker_init_fn)
        base._get_iterator = ForkAfterFeedersEnd(base)
    return loader


class SafeCheckpoints:
    """What every pigg trainer (SFT's, GRPO's) adds to a Trainer: DataLoader workers that outlive a stop
    signal and fork safely, and checkpoints that a kill mid-save never leaves broken."""

    _staging = False

    # -- DataLoader workers that outlive a stop signal and fork safely ---------------------------------
    def get_train_dataloader(self):
        return _prepare_workers(super().get_train_dataloader())

    def get_eval_dataloader(self, eval_dataset=None):
        return _prepare_workers(super().get_eval_dataloader(eval_dataset))

    # -- checkpoints: written to RUN/.partial/checkpoint-N, renamed when complete ----------------------
    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        stale = run_dir / STAGING / name  # left by a save that was killed at this same step
        if self.args.should_save and stale.exists():
            shutil.rmtree(stale)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every rank has written its part (RNG state, shards)
        if self.args.should_save:
            final = run_dir / name
            if final.exists():  # the same step saved again (a run resumed from it): replace it whole
                shutil.rmtree(final)
            os.replace(run_dir / STAGING / name, final)
            rotate_checkpoints(str(run_dir), self.args.save_total_limit)
        self.accelerator.wait_for_everyone()


class PiggTrainer(SafeCheckpoints, Trainer):
    _since: tuple[float, int, int] | None = None  # (time, step, tokens) at the previous training log
    # Padding since the previous log: [real tokens, tokens if padded per batch, tokens computed]
    _padding = (0, 0, 0)

    def __init__(
        self,
        *args,
        family=None,
        learning_rates: dict[str, float] | None = None,
        sample_lengths: list[int] | None = None,
        logits: str = "auto",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.family = family
        self.learning_rates = learning_rates
        self.sample_lengths = sample_lengths
        self.logits = logits  # train.logits: where the output layer runs (pigg.train.loss)
        self.loss_modes: set[str] = set()  # the modes that ran, for the log
        self.add_callback(_ThroughputClock(self))

    # -- the output layer only where labels are (pigg.train.loss) -------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if labels is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        liger = self.args.use_liger_kernel
        # only `auto` may chunk, by the batch's trained tokens: count them (a device sync) only then
        may_chunk = self.logits == "auto" and not (liger or sharded)
        trained = int((next_token_targets(labels) != -100).sum()) if may_chunk else 0
        mode = resolve_mode(self.logits, liger, sharded, trained, output_layer(self.model).out_features)
        if mode not in self.loss_modes:
            self.loss_modes.add(mode)
            if self.is_world_process_zero():
                print(f"output layer: {describe_mode(mode, liger)}", flush=True)
        if mode == "all":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        loss, outputs = causal_lm_loss(model, inputs, labels, num_items_in_batch, mode)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as the stock loss: DDP averages gradients over ranks, and this loss is already a share of
            # the whole step's trained tokens
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    # -- one learning rate per part (vision, aligner, llm); no decay on biases and norms -----------
    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.family is None or self.learning_rates is None:
            return super().create_optimizer(model)
        from pigg.models.trainable import param_groups

        target = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(target))
        groups = param_groups(target, self.family, self.learning_rates, self.args.weight_decay, decay)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, target)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # -- length-grouped batches from the token counts validation measured ---------------------------
    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "group_by_length" or self.sample_lengths is None:
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        size = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(size, lengths=self.sample_lengths)

    # -- padding statistics from the collator; real (non-padding) tokens for tokens/s --------------
    def _track_num_input_tokens(self, inputs):
        stats = inputs.get(STATS_KEY)  # training batches only: the Trainer calls this after the step
        if stats is None:
            return super()._track_num_input_tokens(inputs)
        self._padding = tuple(a + int(b) for a, b in zip(self._padding, stats.tolist(), strict=True))
        if self.args.include_num_input_tokens_seen == "non_padding":
            real = stats[0].to(self.args.device)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(real).sum().item())
        else:
            super()._track_num_input_tokens(inputs)

    def _prepare_inputs(self, inputs):
        # The model never sees the statistics; the batch itself keeps them for _track_num_input_tokens.
        return super()._prepare_inputs({k: v for k, v in inputs.items() if k != STATS_KEY})

    def padding_fractions(self) -> tuple[float, float] | None:
        """(padding if every batch were padded, padding as computed) since the previous log."""
        real, padded, computed = self._padding
        if not computed:
            return None
        return 1 - real / padded, 1 - real / computed

    # -- throughput in every training log ------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now, step, tokens = time.perf_counter(), self.state.global_step, self.state.num_input_tokens_seen
            if self._since is not None and now > self._since[0] and step > self._since[1]:
                seconds = now - self._since[0]
                per_step = (
                    self.args.per_device_train_batch_size
                    * self.args.gradient_accumulation_steps
                    * self.args.world_size
                )
                logs["samples_per_second"] = round((step - self._since[1]) * per_step / seconds, 3)
                logs["tokens_per_second"] = round((tokens - self._since[2]) / seconds, 1)
            self._since = (now, step, tokens)
            fractions = self.padding_fractions()
            if fractions is not None:
                logs["padding_fraction"] = round(fractions[1], 4)
                if getattr(self.data_collator, "pack_length", None):
                    logs["padding_fraction_unpacked"] = round(fractions[0], 4)
                self._padding = (0, 0, 0)
        super().log(logs, start_time)


def describe_mode(mode: str, liger: bool) -> str:
    return {
        "all": "logits at every position, "
        + ("Liger's fused linear cross-entropy" if liger else "the model's own loss (train.logits=all)"),
        "labelled": "logits only at trained positions",
        "chunked": "logits only at trained positions, cross-entropy in chunks recomputed in backward",
    }[mode]


class _ThroughputClock(TrainerCallback):
    """Starts the first throughput interval when training does (after a resume: at the resumed step)."""

    def __init__(self, trainer: PiggTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._since = (time.perf_counter(), state.global_step, state.num_input_tokens_seen)


def build_trainer(
    model,
    renderer: Renderer,
    train_samples: list[Sample],
    samples_per_step: int,
    eval_samples: list[Sample] | None = None,
    processor=None,
    callbacks: list | None = None,
    tensorboard_dir: Path | None = None,
    family=None,
    learning_rates: dict[str, float] | None = None,
    collator: TrainingCollator | None = None,
    sample_lengths: list[int] | None = None,
    logits: str = "auto",
    trainer_class: type[PiggTrainer] = PiggTrainer,
    trainer_options: dict | None = None,
    **arguments,
) -> PiggTrainer:
    """A PiggTrainer over pigg samples; progress is pigg's one-line-per-log ProgressCallback instead of the
    Trainer's printer; TensorBoard, when asked, writes to `tensorboard_dir`."""
    from transformers import PrinterCallback, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from pigg.train.callbacks import ProgressCallback

    args = TrainingArguments(
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        # evaluation reports the loss only: without this the Trainer gathers every eval batch's logits
        prediction_loss_only=True,
        **arguments,
    )
    extra = list(callbacks or [])
    if tensorboard_dir is not None:
        board = TensorBoardCallback()
        board.logging_dir = str(tensorboard_dir)
        extra.append(board)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=SampleList(train_samples),
        eval_dataset=SampleList(eval_samples) if eval_samples else None,
        data_collator=collator or TrainingCollator(renderer),
        processing_class=processor,
        callbacks=[ProgressCallback(samples_per_step), *extra],
        family=family,
        learning_rates=learning_rates,
        sample_lengths=sample_lengths,
        logits=logits,
        **(trainer_options or {}),
    )
    trainer.remove_callback(PrinterCallback)
    return trainer
