"""`pigg bench-serve`: `pigg serve` under load on localhost, one-at-a-time against batched, in one run.

The same requests (the run's held-out screens, asked of the chosen agents in turn) go first to a server
that generates one request at a time, from one client; then to a server that batches, from `concurrency`
clients at once. Every batched answer must equal its one-at-a-time answer; errors are counted, never
dropped. The server is a real `pigg serve` subprocess, so the clients' work is not on its event loop.
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
    from pigg.grounding.agent import resolve_model
    from pigg.grounding.evaluate import _eval_config
    from pigg.serve.engine import GLOBAL, ServeEngine
    from pigg.train.run import prepare_data

    cfg = _eval_config(resolve_model(str(run_dir)), None, None, count)
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


def start_server(run_dir: Path, port: int, max_batch: int, max_wait_ms: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "pigg", "serve", str(run_dir), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
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


def phase(run_dir: Path, requests: list[dict], concurrency: int, max_batch: int, max_wait_ms: float) -> dict:
    from pigg.serve.server import free_port

    port = free_port()
    server = start_server(run_dir, port, max_batch, max_wait_ms)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(base, server))
        print(f"  max batch {max_batch}, {concurrency} client(s): {len(requests)} requests ...", flush=True)
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
    print(f"bench-serve {run_dir}: {count} click requests across agents {users}")
    one = phase(run_dir, requests, 1, 1, 0.0)
    batched = phase(run_dir, requests, concurrency, max_batch, max_wait_ms)
    mismatches = [
        i
        for i, (a, b) in enumerate(zip(one["answers"], batched["answers"], strict=True))
        if a is not None and a != b
    ]
    result = {
        "run": str(run_dir),
        "agents": users,
        "one_at_a_time": {k: v for k, v in one.items() if k != "answers"},
        "batched": {k: v for k, v in batched.items() if k != "answers"},
        "speedup": round(batched["requests_per_s"] / one["requests_per_s"], 2),
        "answers_differing": len(mismatches),
        "differing_samples": [
            {"request": i, "one_at_a_time": one["answers"][i], "batched": batched["answers"][i]}
            for i in mismatches[:5]
        ],
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    path = Path(out) if out else run_dir / "serve_bench.json"
    path.write_text(json.dumps(result, indent=2))
    for label, p in (("one at a time", one), (f"batched (max {max_batch})", batched)):
        lat = p["latency_ms"]
        print(
            f"{label:>20}: {p['requests_per_s']:7.2f} requests/s | p50 {lat['p50']:.0f} ms | p95 {lat['p95']:.0f} ms"
            f" | errors {p['errors']} | batches {p['server']['batches']}"
        )
    print(f"speedup {result['speedup']}x; batched answers differing from one-at-a-time: {len(mismatches)}")
    if one["errors"] or batched["errors"] or mismatches:
        raise PiggError(f"bench-serve found errors or differing answers: see {path}")
    return path
