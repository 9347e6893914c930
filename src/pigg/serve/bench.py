"""`pigg bench-serve`: `pigg serve` under load on localhost, one at a time against two ways of batching.

The same requests (the run's held-out screens, asked of the chosen agents in turn) go first to a server
that generates one request at a time, from one client; then, from `concurrency` clients at once, to a
server that batches each adapter's requests apart (`--batching per-adapter`), and to one that mixes users
in a batch (`--batching mixed`). Every batched answer must equal its one-at-a-time answer; errors are
counted, never dropped. Each server is a real `pigg serve` subprocess, so the clients' work is not on its
event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pigg.errors import PiggError


def bench_requests(run_dir: Path, count: int, agents: list[str] | None) -> list[dict]:
    """`count` click requests on the run's held-out screens, the agents taken in turn."""
    import tempfile

    from pigg.data.sample import load_image, resolve_image_path
    from pigg.evaluation.run import eval_config
    from pigg.infer import resolve_model
    from pigg.serve.engine import GLOBAL, ServeEngine
    from pigg.train.build import prepare_data

    cfg = eval_config(resolve_model(str(run_dir)), "grounding", None, None, count)
    with tempfile.TemporaryDirectory() as scratch:
        samples = prepare_data(cfg, run_dir=Path(scratch)).train
    if not samples:
        raise PiggError(f"no held-out screens in {run_dir}'s data to send")
    if agents is None:
        agents = [GLOBAL, *ServeEngine.users_of(run_dir)]
    requests = []
    for i in range(count):
        sample = samples[i % len(samples)]
        ref = sample.image_refs()[-1]
        if isinstance(ref, str):
            data = resolve_image_path(ref, sample.base_dir).read_bytes()
        else:
            buffer = io.BytesIO()
            load_image(ref).save(buffer, format="PNG")
            data = buffer.getvalue()
        text = next(
            item["text"]
            for m in sample.messages
            if m["role"] == "user"
            for item in m["content"]
            if item.get("type") == "text"
        )
        agent = agents[i % len(agents)]
        requests.append(
            {
                "image": base64.b64encode(data).decode(),
                "instruction": text,
                "user": None if agent == GLOBAL else agent,
            }
        )
    return requests


def start_server(
    run_dir: Path, port: int, max_batch: int, max_wait_ms: float, batching: str = "mixed"
) -> subprocess.Popen:
    command = [sys.executable, "-m", "pigg", "serve", str(run_dir), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--batching", batching]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ
    )


async def wait_ready(base: str, server: subprocess.Popen, seconds: float = 180) -> dict:
    import httpx

    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise PiggError(f"the server stopped: {server.stdout.read()[-2000:]}")
            try:
                response = await client.get(f"{base}/health", timeout=2)
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise PiggError(f"the server at {base} did not answer within {seconds:.0f}s")


async def drive(base: str, requests: list[dict], concurrency: int) -> dict:
    """Send every request, `concurrency` at a time; answers in request order, latencies, wall time."""
    import httpx

    answers: list = [None] * len(requests)
    latencies: list[float] = [0.0] * len(requests)
    errors: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)

    async def client_loop(client):
        while not queue.empty():
            i = queue.get_nowait()
            began = time.perf_counter()
            response = await client.post(f"{base}/v1/click", json=requests[i], timeout=300)
            latencies[i] = time.perf_counter() - began
            if response.status_code != 200:
                errors.append(f"request {i}: {response.status_code} {response.text[:200]}")
                continue
            body = response.json()
            answers[i] = (body["answer"], body["x"], body["y"])

    limits = httpx.Limits(max_connections=concurrency)
    began = time.perf_counter()
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - began
    ms = sorted(1000 * t for t in latencies)
    health = httpx.get(f"{base}/health", timeout=10).json()
    return {
        "requests": len(requests),
        "concurrency": concurrency,
        "errors": len(errors),
        "error_samples": errors[:5],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(requests) / wall, 2),
        "latency_ms": {
            "p50": round(statistics.median(ms), 1),
            "p95": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 1),
            "mean": round(statistics.fmean(ms), 1),
        },
        "server": {k: health[k] for k in ("batches", "batch_sizes", "adapter_loads", "adapter_evictions")},
        "answers": answers,
    }


def phase(
    run_dir: Path, requests: list[dict], concurrency: int, max_batch: int, max_wait_ms: float, batching: str
) -> dict:
    from pigg.serve.server import free_port

    port = free_port()
    server = start_server(run_dir, port, max_batch, max_wait_ms, batching)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(base, server))
        print(
            f"  {batching}, max batch {max_batch}, {concurrency} client(s): {len(requests)} requests ...",
            flush=True,
        )
        return asyncio.run(drive(base, requests, concurrency))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def run_bench(
    run_dir, count: int, concurrency: int, agents, max_batch: int, max_wait_ms: float, out=None
) -> Path:
    from pigg.serve.engine import GLOBAL

    run_dir = Path(run_dir)
    requests = bench_requests(run_dir, count, agents)
    users = sorted({GLOBAL if r["user"] is None else str(r["user"]) for r in requests})
    print(f"bench-serve {run_dir}: {count} click requests across {len(users)} agents {users}")
    phases = {
        "one_at_a_time": phase(run_dir, requests, 1, 1, 0.0, "per-adapter"),
        "per_adapter": phase(run_dir, requests, concurrency, max_batch, max_wait_ms, "per-adapter"),
        "mixed": phase(run_dir, requests, concurrency, max_batch, max_wait_ms, "mixed"),
    }
    one = phases["one_at_a_time"]
    result = {"run": str(run_dir), "agents": users, "threads": os.environ.get("OMP_NUM_THREADS")}
    failed = bool(one["errors"])
    for name, p in phases.items():
        differing = [
            i
            for i, (a, b) in enumerate(zip(one["answers"], p["answers"], strict=True))
            if a is not None and a != b
        ]
        failed = failed or bool(p["errors"] or differing)
        result[name] = {k: v for k, v in p.items() if k != "answers"} | {
            "speedup": round(p["requests_per_s"] / one["requests_per_s"], 2),
            "answers_differing": len(differing),
            "differing_samples": [{"request": i, "one_at_a_time": one["answers"][i], "batched": p["answers"][i]} for i in differing[:5]],
        }  # fmt: skip
    path = Path(out) if out else run_dir / "serve_bench.json"
    path.write_text(json.dumps(result, indent=2))
    print(
        f"{'mode':>16} | requests/s | p50 ms | p95 ms | speedup | batches | mean batch | differing | errors"
    )
    for name, r in ((n, result[n]) for n in phases):
        lat, batches = r["latency_ms"], r["server"]["batches"]
        print(
            f"{name.replace('_', ' '):>16} | {r['requests_per_s']:10.2f} | {lat['p50']:6.0f} | {lat['p95']:6.0f} | "
            f"{r['speedup']:6.2f}x | {batches:7d} | {r['requests'] / max(batches, 1):10.1f} | "
            f"{r['answers_differing']:9d} | {r['errors']:6d}"
        )
    if failed:
        raise PiggError(f"bench-serve found errors or differing answers: see {path}")
    return path
