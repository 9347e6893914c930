"""Micro-batching for `pigg serve`: requests that arrive within `max_wait_ms` of each other are generated
together (one batch per batch key: answer length and sampling, and adapter where batches do not mix
them), on one worker thread (the event loop keeps accepting meanwhile, so the requests that arrive
during a generation form the next batch)."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from pigg.serve.engine import Answer, Job, ServeEngine


class MicroBatcher:
    def __init__(self, engine: ServeEngine, max_batch: int = 16, max_wait_ms: float = 10.0):
        if max_batch < 1:
            raise ValueError("--max-batch must be at least 1")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pigg-generate")

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._serve_forever())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True)

    def enqueue(self, job: Job) -> asyncio.Future:
        """Queue a job; its future gets the Answer. Cancelling the future before its batch starts takes
        the job out of it; once it runs, set `job.cancelled` to stop its row."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((job, future))
        return future

    async def submit(self, job: Job) -> Answer:
        return await self.enqueue(job)

    async def _collect(self) -> list[tuple[Job, asyncio.Future]]:
        """The first waiting request, and whatever joins it within max_wait (up to max_batch)."""
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[tuple, list[tuple[Job, asyncio.Future]]] = {}
            for job, future in batch:
                if not future.cancelled():  # the client went away while waiting
                    groups.setdefault(self.engine.batch_key(job), []).append((job, future))
            for items in groups.values():
                jobs = [job for job, _ in items]
                try:
                    answers = await loop.run_in_executor(self._executor, _run, self.engine, jobs)
                except Exception as exc:  # every request of the batch learns why; the server goes on
                    for _, future in items:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(items, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)


def _run(engine: ServeEngine, jobs: list[Job]) -> list[Answer]:
    try:
        return engine.run(jobs)
    except StopIteration as exc:  # an asyncio future cannot carry StopIteration: the request would hang
        raise RuntimeError(f"StopIteration in generation: {exc}") from exc
