"""The model side of `pigg serve`: the global agent loaded once, users' adapters in an LRU on top of it.

Users' adapters are peft LoRA adapters on the global weights (`pigg personalize` writes them to
RUN/users/<id>/). The first one wraps the loaded model in a PeftModel; later ones are added to it and the
least recently used is deleted when more than `adapters_in_memory` are held, so the global weights are
loaded once and never again. The global model answers with every adapter disabled.

Everything here runs on the batcher's one worker thread: a request is only ever one of a batch of
requests for the same adapter.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from pigg.data.render import prompt_messages
from pigg.data.sample import Sample
from pigg.errors import ConfigError
from pigg.grounding.agent import ADAPTER_CONFIG, USERS_DIR, Agent, Click, resolve_model

GLOBAL = "global"
# a user id as a folder name under RUN/users: no separators, no dots, so never a path outside it
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UnknownUser(LookupError):
    """No adapter for this user in the run (HTTP 404)."""


class BadUserId(ValueError):
    """A user id that cannot name a folder under RUN/users (HTTP 400)."""


@dataclass
class Job:
    """One request for the engine: a prompt (pigg chat messages, images as PIL) and whose adapter."""

    adapter: str  # GLOBAL or a user id
    messages: list[dict]
    max_new_tokens: int
    size: tuple[int, int] | None = None  # the screenshot's own size, for reading a click

    @property
    def key(self) -> tuple[str, int]:
        """Jobs with the same key are generated together."""
        return self.adapter, self.max_new_tokens

    @property
    def images(self) -> list[Image.Image]:
        return [
            item["image"]
            for m in self.messages
            for item in m["content"]
            if isinstance(item, dict) and item.get("type") == "image"
        ]


@dataclass
class Answer:
    raw: str
    prompt_tokens: int
    completion_tokens: int
    click: Click | None = None


@dataclass
class EngineStats:
    requests: int = 0
    batches: int = 0
    generate_seconds: float = 0.0
    adapter_loads: int = 0
    adapter_evictions: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


def click_messages(image: Image.Image, instruction: str) -> list[dict]:
    """The prompt `pigg predict` sends: the screenshot, then the instruction, as one user turn."""
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": instruction}],
        }
    ]


class ServeEngine:
    def __init__(
        self, run_dir: str | Path, adapters_in_memory: int = 8, max_new_tokens: int = 32, dtype=None
    ):
        if adapters_in_memory < 1:
            raise ConfigError("--adapters-in-memory must be at least 1")
        self.run_dir = Path(run_dir)
        ref = resolve_model(str(self.run_dir))
        if ref.run_dir is None:
            raise ConfigError(f"{run_dir} is not a pigg run folder (no pigg_run.json); give the global run")
        self.model_name = ref.label
        self.agent = Agent.load(ref, dtype, max_new_tokens)
        self.max_new_tokens = max_new_tokens
        self.capacity = adapters_in_memory
        self.loaded: OrderedDict[str, None] = OrderedDict()  # user ids, least recently used first
        self.peft = None  # the PeftModel wrapper, made with the first user's adapter
        self.stats = EngineStats()
        self._lock = threading.Lock()  # one generation at a time, whoever calls

    # -- users ----------------------------------------------------------------------------------------
    def users(self) -> list[str]:
        return self.users_of(self.run_dir)

    @staticmethod
    def users_of(run_dir: Path) -> list[str]:
        """The users with an adapter in the run, numerically where they are numbers."""
        folder = Path(run_dir) / USERS_DIR
        names = [p.name for p in folder.glob("*") if USER_ID.match(p.name) and (p / ADAPTER_CONFIG).is_file()]
        return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))

    def adapter_dir(self, user: str) -> Path:
        """RUN/users/<user>, checked: an id that is not a plain name is refused, a missing one is unknown."""
        if not USER_ID.match(user):
            raise BadUserId(f"user id {user!r} is not a plain name (letters, digits, '-' and '_' only)")
        folder = self.run_dir / USERS_DIR / user
        if not (folder / ADAPTER_CONFIG).is_file():
            raise UnknownUser(f"no adapter for user {user!r} in {self.run_dir}; users: {self.users()}")
        return folder

    def _ensure_loaded(self, user: str) -> None:
        from peft import PeftModel

        if user in self.loaded:
            self.loaded.move_to_end(user)
            return
        folder = self.adapter_dir(user)
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.agent.model, str(folder), adapter_name=user)
            self.peft.eval()
            self.agent.model = self.peft
        else:
            self.peft.load_adapter(str(folder), adapter_name=user)
            if len(self.loaded) >= self.capacity:  # the new one is in: now the least recently used goes
                evicted, _ = self.loaded.popitem(last=False)
                self.peft.set_adapter(user)
                self.peft.delete_adapter(evicted)
                self.stats.adapter_evictions += 1
        self.loaded[user] = None
        self.stats.adapter_loads += 1

    def _using(self, adapter: str):
        """A context in which the model answers as `adapter` (the global model: every adapter off)."""
        if adapter == GLOBAL:
            return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()
        self._ensure_loaded(adapter)
        self.peft.set_adapter(adapter)
        return contextlib.nullcontext()

    # -- generation -----------------------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> list[Answer]:
        """Answers for jobs that share a key, generated as one batch (greedy, left-padded)."""
        if len({job.key for job in jobs}) != 1:
            raise ValueError("a batch must be one adapter and one max_new_tokens")
        agent = self.agent
        with self._lock:
            began = time.perf_counter()
            with self._using(jobs[0].adapter):
                prompts = [prompt_messages(agent.renderer.messages(Sample(job.messages))) for job in jobs]
                inputs = agent.prompt_inputs(prompts, [job.images for job in jobs])
                agent.max_new_tokens = jobs[0].max_new_tokens
                new = agent.generate_ids(inputs)
            self._count(len(jobs), time.perf_counter() - began)
        texts = agent.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        answers = []
        for job, text, ids, used in zip(jobs, texts, new, prompt_tokens, strict=True):
            click = agent.read_click(text, job.size) if job.size is not None else None
            answers.append(Answer(text, int(used), self._completion_tokens(ids), click))
        return answers

    def _completion_tokens(self, ids: torch.Tensor) -> int:
        """Generated tokens up to and including the first end token (rows that ended early are padded)."""
        markers = self.agent.renderer.markers
        ends = {markers.pad, markers.turn_end, self.agent.processor.tokenizer.eos_token_id}
        for i, token in enumerate(ids.tolist()):
            if token in ends:
                return i + 1
        return len(ids)

    def _count(self, size: int, seconds: float) -> None:
        s = self.stats
        s.requests += size
        s.batches += 1
        s.generate_seconds += seconds
        s.batch_sizes[size] = s.batch_sizes.get(size, 0) + 1
