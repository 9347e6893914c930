"""`pigg serve`, `pigg bench-serve` and `pigg demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pigg.cli.apps import (
    app,
)
from pigg.errors import PiggError


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="the global run folder (its users' adapters in RUN/users/)")],
    host: Annotated[
        str, typer.Option(help="address to bind; off loopback an API key is required")
    ] = "127.0.0.1",
    port: int = 8000,
    max_batch: Annotated[int, typer.Option(help="requests generated together at most")] = 16,
    max_wait_ms: Annotated[
        float, typer.Option(help="how long a request waits for others to batch with")
    ] = 10.0,
    adapters_in_memory: Annotated[
        int, typer.Option(help="user adapters kept loaded (least recently used out)")
    ] = 8,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="PIGG_API_KEY", help="require Authorization: Bearer KEY (env PIGG_API_KEY)"),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="answer length; a request may ask for up to 8x")] = 32,
    max_pixels: Annotated[int, typer.Option(help="largest screenshot accepted, in pixels")] = 4096 * 4096,
    max_image_mb: Annotated[float, typer.Option(help="largest screenshot accepted, in MiB")] = 16.0,
    max_images: Annotated[int, typer.Option(help="screenshots in one chat request at most")] = 4,
    engine: Annotated[
        str, typer.Option(help="pigg (transformers + peft, CPU or GPU) or vllm (GPU)")
    ] = "pigg",
    merged: Annotated[
        Path | None, typer.Option(help="--engine vllm on a LoRA run: its merged model (`pigg merge`)")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="--engine vllm: print the vLLM command, run nothing")] = False,
    batching: Annotated[
        str, typer.Option(help="mixed: users' requests share a batch (peft adapter_names); per-adapter")
    ] = "mixed",
):
    """Serve the global agent and every user's adapter over HTTP: POST /v1/click, the OpenAI-compatible
    POST /v1/chat/completions, GET /health, and a page at / that draws the click."""
    from pigg.serve.server import check_exposure, run_vllm, vllm_command

    if engine == "vllm":
        check_exposure(host, api_key)
        command = vllm_command(run, host, port, merged, adapters_in_memory)
        print(" ".join(command), flush=True)
        if not dry_run:
            run_vllm(command, api_key)
        return
    if engine != "pigg":
        raise PiggError(f"--engine {engine}: pigg or vllm")
    from pigg.extras import require

    require("serve", "pigg serve")
    from pigg.serve.app import ServeSettings
    from pigg.serve.server import serve as run_server

    settings = ServeSettings(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_pixels=max_pixels,
        max_image_bytes=int(max_image_mb * 2**20),
        max_images=max_images,
        max_new_tokens=max_new_tokens,
        api_key=api_key,
    )
    if batching not in ("mixed", "per-adapter"):
        raise PiggError(f"--batching {batching}: mixed or per-adapter")
    run_server(run, host, port, settings, adapters_in_memory, mixed=batching == "mixed")


@app.command("bench-serve")
def bench_serve(
    run: Annotated[Path, typer.Argument(help="the global run folder to serve")],
    requests: Annotated[int, typer.Option(help="requests in each phase")] = 200,
    concurrency: Annotated[int, typer.Option(help="clients sending at once in the batched phase")] = 16,
    users: Annotated[
        str | None, typer.Option(help="agents to ask in turn, e.g. global,1,2 (default: all)")
    ] = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    out: Annotated[Path | None, typer.Option(help="results JSON (default: RUN/serve_bench.json)")] = None,
):
    """Load-test `pigg serve` on localhost: the same requests one at a time (max batch 1, one client),
    then from concurrent clients to a server batching per adapter and to one mixing users in a batch;
    every batched answer must equal its one-at-a-time answer. Reports requests/s, p50/p95 latency and
    batches of each."""
    from pigg.extras import require

    require("serve", "pigg bench-serve")
    from pigg.serve.bench import run_bench

    agents = [u.strip() for u in users.split(",")] if users else None
    print(run_bench(run, requests, concurrency, agents, max_batch, max_wait_ms, out))


@app.command()
def demo(
    kind: Annotated[
        str,
        typer.Argument(
            help="grounding (GUI clicks, the default), grpo (click-reward RL after SFT) or text (seed 004's "
            "classification)"
        ),
    ] = "grounding",
    out: Annotated[Path | None, typer.Option(help="folder for the demo's data, model, runs and logs")] = None,
    users: Annotated[int, typer.Option(help="grounding, grpo: synthetic users")] = 12,
    per_user: Annotated[int, typer.Option(help="grounding, grpo: screens per training user")] = 80,
    held_out_screens: Annotated[
        int | None, typer.Option(help="grounding, grpo: screens per held-out user (default 400, 200)")
    ] = None,
    articles: Annotated[int, typer.Option(help="text: training articles (a sixth as many held out)")] = 2400,
    steps: Annotated[
        int | None,
        typer.Option(help="training steps of the global / SFT / text run (default: the recipe's)"),
    ] = None,
    rl_steps: Annotated[int | None, typer.Option(help="grpo: GRPO steps (default: the recipe's)")] = None,
    seed: Annotated[
        int | None, typer.Option(help="training seed of every run (default: the recipes')")
    ] = None,
):
    """The embedded demos. grounding: synthetic users, a tiny Qwen3-VL, global training, evaluation,
    personalization. grpo: the same SFT on screens where buttons move within their cells, then GRPO with
    click rewards, zero-shot vs SFT vs SFT+GRPO. text: synthetic news, a tiny Qwen2.5, full fine-tuning,
    base vs tuned classification."""
    from pigg.demo import run_demo, run_grpo_demo, run_text_demo

    seeded = [f"train.seed={seed}"] if seed is not None else []
    overrides = [f"train.max_steps={steps}"] if steps else []
    if kind == "text":
        print(
            run_text_demo(out or Path("demo_text_out"), articles, max(40, articles // 6), overrides + seeded)
        )
    elif kind == "grounding":
        held_out = {"held_out_screens": held_out_screens} if held_out_screens else {}
        print(run_demo(out or Path("demo_out"), users, per_user, **held_out, overrides=overrides + seeded))
    elif kind == "grpo":
        rl = [f"train.max_steps={rl_steps}"] if rl_steps else []
        held_out = {"held_out_screens": held_out_screens} if held_out_screens else {}
        path = run_grpo_demo(out or Path("demo_grpo_out"), users, per_user, **held_out,
                             sft_overrides=overrides + seeded, overrides=rl + seeded)  # fmt: skip
        print(path)
    else:
        raise PiggError(f"pigg demo {kind}: there are three demos, grounding, grpo and text")
