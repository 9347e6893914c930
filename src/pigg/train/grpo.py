"""`train.stage: grpo`: reinforcement learning with the task's rewards, on TRL's GRPOTrainer.

TRL does the algorithm (sampling a group of answers per prompt, group-relative advantages, the clipped
policy loss, the KL to the starting model, vLLM generation on a GPU); pigg plugs in what it already
guarantees for SFT: its readers and up-front validation, the prompts as SFT and `pigg eval` render them
(the task's `prompt`), the task's rewards, LoRA / full / selective parts (the model comes from
`build_model`), checkpoints a kill cannot break, time limits and SIGTERM (RunControl), and a run folder
that `pigg eval`, `predict`, `serve` and `merge` load.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

from pigg.config import ExperimentConfig
from pigg.data.render import Renderer
from pigg.data.sample import Sample
from pigg.errors import ConfigError
from pigg.extras import require
from pigg.tasks import task_for
from pigg.tasks.base import Task

INDEX = "sample_index"  # the one stored column: each row's prompt is built from its sample when read


def prompt_with_images(task: Task, sample: Sample, renderer: Renderer) -> list[dict]:
    """The sample's prompt messages with its decoded screenshots in place of their references (TRL's
    processor call takes the images from the messages)."""
    messages, images = task.prompt(sample, renderer)
    pending = iter(images)
    return [
        {
            "role": m["role"],
            "content": [
                {"type": "image", "image": next(pending)} if item["type"] == "image" else item
                for item in m["content"]
            ],
        }
        for m in messages
    ]


def prompt_dataset(samples: list[Sample], task: Task, renderer: Renderer):
    """A `datasets.Dataset` of sample indices whose rows are read as {"prompt": ..., INDEX: ...}: prompts
    and screenshots are built when a batch is drawn, not held in memory."""
    import datasets

    def rows(batch: dict) -> dict:
        return {
            "prompt": [prompt_with_images(task, samples[i], renderer) for i in batch[INDEX]],
            INDEX: batch[INDEX],
        }

    return datasets.Dataset.from_dict({INDEX: list(range(len(samples)))}).with_transform(rows)


class TaskReward:
    """One of the task's rewards as TRL calls a reward function: a batch of completions and the rows'
    columns; each completion is read as the task reads an answer, then rewarded."""

    def __init__(self, name: str, reward, task: Task, samples: list[Sample], renderer: Renderer):
        self.__name__ = name  # TRL logs rewards/<name>/mean and /std
        self.reward, self.task, self.samples, self.renderer = reward, task, samples, renderer

    def __call__(self, prompts, completions, **columns) -> list[float]:
        values = []
        for completion, index in zip(completions, columns[INDEX], strict=True):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            sample = self.samples[index]
            values.append(
                float(self.reward(self.task.parse(text, sample, self.renderer), sample, self.renderer))
            )
        return values


def check_grpo(cfg: ExperimentConfig) -> None:
    """What a GRPO run needs, checked before any model loads: TRL, and rewards its task has."""
    require("rl", "train.stage=grpo")
    task_rewards(cfg, task_for(cfg))


def task_rewards(cfg: ExperimentConfig, task: Task) -> dict[str, float]:
    """The rewards and weights the run uses: rl.rewards, else the task's defaults; unknown names refused."""
    chosen = cfg.rl.rewards or task.default_rewards
    unknown = sorted(set(chosen) - set(task.rewards()))
    if unknown:
        raise ConfigError(
            f"rl.rewards names {', '.join(unknown)}, which task {task.name} has not; its rewards are "
            f"{', '.join(task.rewards())}"
        )
    return dict(chosen)


def build_grpo_trainer(cfg: ExperimentConfig, data, model, arguments: dict, board: bool):
    """TRL's GRPOTrainer (with pigg's safe checkpoints) over the run's samples (train.build's PreparedData)
    and the task's rewards, with pigg's progress line and TensorBoard when `board`."""
    from transformers.integrations import TensorBoardCallback

    from pigg.train.callbacks import ProgressCallback

    world = int(os.environ.get("WORLD_SIZE", 1))  # processes under torchrun: answers per step add up
    callbacks = [ProgressCallback(cfg.train.batch_size * cfg.train.grad_accum * world)]
    if board:
        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(Path(arguments["output_dir"]) / "tensorboard")
        callbacks.append(tensorboard)
    return grpo_trainer(cfg, model, data.train, data.processor, data.renderer, arguments, callbacks)


def grpo_trainer(
    cfg: ExperimentConfig,
    model,
    samples: list[Sample],
    processor,
    renderer: Renderer,
    arguments: dict,
    callbacks: list | None = None,
):
    """TRL's GRPOTrainer with pigg's safe checkpoints over `samples`, rewarded by the task's rewards and
    configured by the rl section; `arguments` are the Trainer's (steps, batch, learning rate, ...). A
    peft model trains its active adapter (TRL keeps a peft model as it is given)."""
    check_grpo(cfg)
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from pigg.train.trainer import SafeCheckpoints

    class PiggGRPOTrainer(SafeCheckpoints, GRPOTrainer):
        """TRL's trainer with pigg's checkpoints, and the share of time spent generating in every log."""

        _generating = 0.0  # seconds in generation (prompt processing and sampling) since the last log
        _since: float | None = None

        def _generate(self, prompts):
            began = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                self._generating += time.perf_counter() - began

        def log(self, logs: dict, start_time: float | None = None) -> None:
            if "loss" in logs:
                now = time.perf_counter()
                if self._since is not None and now > self._since:
                    logs["generation_share"] = round(self._generating / (now - self._since), 4)
                self._since, self._generating = now, 0.0
            super().log(logs, start_time)

    task = task_for(cfg)
    weights = task_rewards(cfg, task)
    functions = task.rewards()
    rl = cfg.rl
    arguments = dict(arguments)
    for unused in ("train_sampling_strategy", "eval_strategy", "eval_steps"):  # TRL samples; no eval
        arguments.pop(unused, None)
    args = GRPOConfig(
        **{"report_to": "none", "disable_tqdm": True, **arguments},
        num_generations=rl.num_generations,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        beta=rl.beta,
        loss_type=rl.loss_type,
        epsilon=rl.epsilon,
        reward_weights=list(weights.values()),
        use_vllm=rl.use_vllm,
        vllm_mode=rl.vllm_mode,
        remove_unused_columns=False,
    )
    # TRL pads prompts by the tokenizer's side: a right-padded batch of prompts shifts every row but the
    # longest off its images (the M-RoPE index then fails, trl#5785); pigg's own batches pad themselves
    processor = copy.deepcopy(processor)
    processor.tokenizer.padding_side = "left"
    trainer = PiggGRPOTrainer(
        model=model,
        reward_funcs=[TaskReward(n, functions[n], task, samples, renderer) for n in weights],
        args=args,
        train_dataset=prompt_dataset(samples, task, renderer),
        processing_class=processor,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer
