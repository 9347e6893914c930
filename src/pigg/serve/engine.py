"""The model side of `pigg serve`: the global agent loaded once, users' adapters in an LRU on top of it.

Users' adapters are peft LoRA adapters on the global weights (`pigg personalize` writes them to
RUN/users/<id>/). The first one wraps the loaded model in a PeftModel; later ones are added to it and the
least recently used is deleted when more than `adapters_in_memory` are held, so the global weights are
loaded once and never again. The global model answers with every adapter disabled.

A batch may mix users (`mixed`, the default): peft's `adapter_names` gives each row its own adapter in
one generate, the global rows as the base model ("__base__"), so many users with few requests each still
fill batches. With `mixed=False` a batch is one adapter's requests (the `--batching per-adapter` mode that
bench-serve compares). Everything here runs on the batcher's one worker thread.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from pigg.data.render import prompt_messages
from pigg.data.sample import Sample
from pigg.errors import ConfigError
from pigg.infer import ADAPTER_CONFIG, USERS_DIR, Agent, resolve_model
from pigg.tasks.grounding import Click, to_click

GLOBAL = "global"
BASE_ROW = "__base__"  # peft's name, in adapter_names, for a row that runs without any adapter
# a user id as a folder name under RUN/users: no separators, no dots, so never a path outside it
USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UnknownUser(LookupError):
    """No adapter for this user in the run (HTTP 404)."""


class BadUserId(ValueError):
    """A user id that cannot name a folder under RUN/users (HTTP 400)."""


@dataclass(frozen=True)
class Sampling:
    """How a request's tokens are chosen: greedy (the default: a click has one right answer) or sampled."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None  # sampled rows of one seeded request are generated alone, after seeding

    def generate_options(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


GREEDY = Sampling()


@dataclass(eq=False)
class Job:
    """One answer to generate: a prompt (pigg chat messages, images as PIL), whose adapter, how long and
    how it is sampled; optionally a callback for the answer's text as it is produced (streaming)."""

    adapter: str  # GLOBAL or a user id
    messages: list[dict]
    max_new_tokens: int
    size: tuple[int, int] | None = None  # the screenshot's own size, for reading a click
    sampling: Sampling = GREEDY
    group: str | None = None  # a seeded request's id: its rows form a batch of their own
    on_text: Callable[[str], None] | None = None  # called from the generation thread with each new piece
    cancelled: threading.Event = field(default_factory=threading.Event)  # the client left: stop its row

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
    ended: bool = True  # the answer ended by itself (finish_reason "stop"), not at max_new_tokens ("length")


def completion_tokens(ids: torch.Tensor, ends: set[int]) -> tuple[int, bool]:
    """Generated tokens up to and including the first end token (rows that ended early are padded), and
    whether there was one."""
    for i, token in enumerate(ids.tolist()):
        if token in ends:
            return i + 1, True
    return len(ids), False


class RowStreamer(BaseStreamer):
    """Hands each row of a batched generate its new text as the tokens come (generate calls `put` with
    the prompt first, then with one token per row per step)."""

    def __init__(self, tokenizer, jobs: list[Job], ends: set[int]):
        self.tokenizer, self.jobs, self.ends = tokenizer, jobs, ends
        self.prompt_seen = False
        self.ids: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)
        self.done = [job.on_text is None for job in jobs]

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            if token in self.ends:
                self.done[row] = True
                continue
            self.ids[row].append(token)
            text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
            # a character still incomplete (bytes of it to come) waits for its next token
            if text.endswith("\ufffd") or not text.startswith(self.sent[row]) or text == self.sent[row]:
                continue
            delta, self.sent[row] = text[len(self.sent[row]) :], text
            self.jobs[row].on_text(delta)

    def end(self) -> None:
        pass


class CancelledRows(StoppingCriteria):
    """A row whose client went away stops at the next step; when every row has stopped, so does generate."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.tensor([job.cancelled.is_set() for job in self.jobs], device=input_ids.device)


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
        self,
        run_dir: str | Path,
        adapters_in_memory: int = 8,
        max_new_tokens: int = 32,
        dtype=None,
        mixed: bool = True,
    ):
        if adapters_in_memory < 1:
            raise ConfigError("--adapters-in-memory must be at least 1")
        self.mixed = mixed
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
    def batch_key(self, job: Job) -> tuple:
        """Jobs with the same key can be generated together: one answer length and sampling (and one
        adapter, unless batches mix them)."""
        key = (job.max_new_tokens, job.sampling, job.group)
        return key if self.mixed else (job.adapter, *key)

    def run(self, jobs: list[Job]) -> list[Answer]:
        """Answers for jobs that share a batch key, generated together (left-padded), in order."""
        if len({self.batch_key(job) for job in jobs}) != 1:
            raise ValueError(
                "a batch must share one answer length and sampling"
                + ("" if self.mixed else " and one adapter")
            )
        return [answer for chunk in self._fitting(jobs) for answer in self._generate(chunk)]

    def _fitting(self, jobs: list[Job]) -> Iterator[list[Job]]:
        """The jobs in order, in runs of at most `adapters_in_memory` users, so every adapter a batch
        needs is loaded at once."""
        chunk: list[Job] = []
        users: set[str] = set()
        for job in jobs:
            more = users | ({job.adapter} - {GLOBAL})
            if len(more) > self.capacity:
                yield chunk
                chunk, more = [], {job.adapter} - {GLOBAL}
            chunk.append(job)
            users = more
        if chunk:
            yield chunk

    def _generate(self, jobs: list[Job]) -> list[Answer]:
        agent = self.agent
        adapters = {job.adapter for job in jobs}
        tokenizer = agent.processor.tokenizer
        options = {"max_new_tokens": jobs[0].max_new_tokens, **jobs[0].sampling.generate_options()}
        with self._lock:
            began = time.perf_counter()
            if len(adapters) == 1:
                using = self._using(jobs[0].adapter)
            else:  # one generate, each row with its own adapter
                for user in sorted(adapters - {GLOBAL}):
                    self._ensure_loaded(user)
                options["adapter_names"] = [
                    BASE_ROW if job.adapter == GLOBAL else job.adapter for job in jobs
                ]
                using = contextlib.nullcontext()
            with using:
                prompts = [prompt_messages(agent.renderer.messages(Sample(job.messages))) for job in jobs]
                inputs = agent.prompt_inputs(prompts, [job.images for job in jobs])
                if any(job.on_text for job in jobs):
                    options["streamer"] = RowStreamer(tokenizer, jobs, self._end_tokens())
                if jobs[0].sampling.seed is not None:
                    torch.manual_seed(jobs[0].sampling.seed)
                new = agent.generate_ids(
                    inputs, stopping_criteria=StoppingCriteriaList([CancelledRows(jobs)]), **options
                )
            self._count(len(jobs), time.perf_counter() - began)
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        answers, ends = [], self._end_tokens()
        for job, text, ids, used in zip(jobs, texts, new, prompt_tokens, strict=True):
            click = to_click(text, job.size, agent.renderer) if job.size is not None else None
            tokens, ended = completion_tokens(ids, ends)
            if job.cancelled.is_set():  # stopped for its client, not by itself: the padding is no end
                tokens, ended = tokens - ended, False
            answers.append(Answer(text, int(used), tokens, click, ended))
        return answers

    def _end_tokens(self) -> set[int]:
        markers = self.agent.renderer.markers
        return {markers.pad, markers.turn_end, self.agent.processor.tokenizer.eos_token_id}

    def _count(self, size: int, seconds: float) -> None:
        s = self.stats
        s.requests += size
        s.batches += 1
        s.generate_seconds += seconds
        s.batch_sizes[size] = s.batch_sizes.get(size, 0) + 1
