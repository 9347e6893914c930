"""`pigg serve` (issue 17): the global agent and two personalized users behind one HTTP API.

The run is the shared tiny trained run (conftest `trained_run`), copied and personalized here for a few
steps: its clicks are parseable and the users' adapters answer their habit prompts differently.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from pigg.data.readers import read_samples
from pigg.data.sample import resolve_image_path
from pigg.errors import ConfigError
from pigg.serve.app import ServeSettings, create_app
from pigg.serve.engine import GLOBAL, Job, ServeEngine, click_messages
from pigg.serve.server import check_exposure, free_port, vllm_command


@pytest.fixture(scope="module")
def served_run(trained_run, tmp_path_factory) -> Path:
    from pigg.personalize import personalize

    run = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("users"))
    personalize(run, ["personalize.max_steps=15", "personalize.users=1-2"])
    return run


@pytest.fixture(scope="module")
def screens(fixed_data) -> list[tuple[bytes, str, str]]:
    """(PNG bytes, instruction, kind) of held-out users' screens, habits included."""
    out = []
    for user in (1, 2):
        for sample in read_samples(fixed_data, [user]).samples[:10]:
            ref = sample.image_refs()[-1]
            text = next(i["text"] for i in sample.messages[0]["content"] if i["type"] == "text")
            out.append((resolve_image_path(ref, sample.base_dir).read_bytes(), text, sample.meta["kind"]))
    return out


@pytest.fixture(scope="module")
def engine(served_run) -> ServeEngine:
    return ServeEngine(served_run, adapters_in_memory=8)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims `width` x `height` pixels (its data is empty): a
    decompression bomb's shape, for checks that must happen before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def client_for(engine, raise_server_exceptions: bool = True, **settings) -> TestClient:
    # raise_server_exceptions=False: a 5xx comes back as the server answers it (Starlette re-raises a
    # handled server error for the server's own log, and TestClient would raise it in the test)
    return TestClient(
        create_app(engine, ServeSettings(**settings)), raise_server_exceptions=raise_server_exceptions
    )


def test_click_answers_as_pigg_predict_for_global_and_each_user(served_run, engine, screens, tmp_path):
    from pigg.predict import predict_click

    image_bytes, instruction, _ = next(s for s in screens if s[2] == "habit")
    path = tmp_path / "screen.png"
    path.write_bytes(image_bytes)
    width, height = Image.open(path).size
    with client_for(engine) as client:
        for user in (None, 1, "2"):
            body = client.post(
                "/v1/click", json={"image": b64(image_bytes), "instruction": instruction, "user": user}
            )
            assert body.status_code == 200, body.text
            answer = body.json()
            expected = predict_click(str(served_run), path, instruction, user=None if user is None else int(user), out=tmp_path / "p.png")  # fmt: skip
            assert answer["answer"] == expected.click.raw
            assert expected.click.point is not None  # the trained run answers with a point
            assert (answer["x"], answer["y"]) == pytest.approx(expected.click.point, abs=0.05)
            assert (answer["width"], answer["height"]) == (width, height)  # the screenshot's own pixels
            assert answer["adapter"] == (GLOBAL if user is None else str(user))
            assert answer["user"] == (None if user is None else str(user))
        health = client.get("/health").json()
    assert health["status"] == "ok" and health["users"] == ["1", "2"]
    assert set(health["adapters_in_memory"]) == {"1", "2"}


def test_users_get_their_own_answers_and_batches_equal_one_at_a_time(engine, screens):
    """Every agent, a batch of 8 different screenshots (different sizes: left padding) against each alone;
    and the adapters really are different agents (habit prompts answered differently)."""
    jobs = {}
    for adapter in (GLOBAL, "1", "2"):
        batch = []
        for data, text, _ in screens[:8]:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            batch.append(Job(adapter, click_messages(image, text), 32, image.size))
        jobs[adapter] = batch
        together = [a.raw for a in engine.run(batch)]
        alone = [engine.run([job])[0].raw for job in batch]
        assert together == alone
        assert len({job.size for job in batch}) > 1  # the batch really mixes screenshot sizes
    answers = {adapter: [a.raw for a in engine.run(batch)] for adapter, batch in jobs.items()}
    assert answers["1"] != answers[GLOBAL] or answers["2"] != answers[GLOBAL]
    engine.mixed = False  # the per-adapter mode never mixes them
    try:
        with pytest.raises(ValueError, match="one adapter"):
            engine.run([jobs["1"][0], jobs["2"][0]])
    finally:
        engine.mixed = True


def test_concurrent_requests_are_batched_per_adapter_with_unchanged_answers(served_run, screens):
    engine = ServeEngine(served_run)
    requests = [
        {"image": b64(data), "instruction": text, "user": [None, "1", "2"][i % 3]}
        for i, (data, text, _) in enumerate(screens[:12])
    ]
    with client_for(engine, max_batch=1) as client:
        one = [client.post("/v1/click", json=r).json() for r in requests]
    with client_for(engine, max_batch=16, max_wait_ms=200) as client:
        with ThreadPoolExecutor(12) as pool:
            batched = list(pool.map(lambda r: client.post("/v1/click", json=r).json(), requests))
        health = client.get("/health").json()
    assert [a["answer"] for a in batched] == [a["answer"] for a in one]
    assert [(a["x"], a["y"]) for a in batched] == [(a["x"], a["y"]) for a in one]
    sizes = {int(k): v for k, v in health["batch_sizes"].items()}
    assert max(sizes) > 1  # some requests were generated together
    assert health["requests"] == 24 and sum(k * v for k, v in sizes.items()) == 24


def test_bad_requests_get_a_4xx_that_says_what_is_wrong_and_the_server_keeps_serving(
    engine, screens, tmp_path
):
    data, text, _ = screens[0]
    big = io.BytesIO()
    Image.new("RGB", (2100, 2000), "white").save(big, format="PNG")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    noisy = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(noisy, format="PNG")
    truncated = noisy.getvalue()[: len(noisy.getvalue()) // 2]
    outside = tmp_path / "x"  # an adapter folder outside the run: a user id must never reach it
    shutil.copytree(engine.run_dir / "users" / "1", outside)
    cases = [
        ({"image": b64(b"not an image"), "instruction": text}, 400, "not an image"),
        ({"image": "%%%", "instruction": text}, 400, "not valid base64"),
        ({"image": b64(gif.getvalue()), "instruction": text}, 400, "GIF images are not accepted"),
        ({"image": b64(truncated), "instruction": text}, 400, "cannot be decoded"),
        ({"image": "data:text/plain;base64,aGk=", "instruction": text}, 400, "data:image/"),
        ({"image": "https://example.com/a.png", "instruction": text}, 400, "fetches no URL"),
        (
            {"image": b64(big.getvalue()), "instruction": text},
            400,
            "2100x2000 = 4,200,000 pixels, over the 4,000,000-pixel limit",
        ),
        (
            {"image": b64(png_claiming(20000, 20000)), "instruction": text},
            400,
            "20000x20000 = 400,000,000 pixels, over the 4,000,000-pixel limit",
        ),
        ({"image": b64(data), "instruction": "x" * 501}, 400, "over the 500 limit"),
        ({"image": b64(data), "instruction": text, "user": 9}, 404, "no adapter for user '9'"),
        ({"image": b64(data), "instruction": text, "user": "../../x"}, 400, "not a plain name"),
        ({"image": b64(data), "instruction": text, "user": str(outside)}, 400, "not a plain name"),
        ({"image": b64(data), "instruction": text, "user": ".."}, 400, "not a plain name"),
        ({"image": b64(data), "instruction": text, "max_new_tokens": 10_000}, 400, "new tokens"),
        ({"instruction": text}, 422, "image: Field required"),
        ({"image": b64(data)}, 422, "instruction: Field required"),
        ({"image": b64(data), "instruction": ""}, 422, "instruction"),
    ]
    with client_for(engine, max_pixels=4_000_000, max_instruction_chars=500) as client:
        for body, status, words in cases:
            response = client.post("/v1/click", json=body)
            assert response.status_code == status, (body.get("user"), response.text)
            error = response.json()["error"]
            assert words in error["message"], error
            assert error["code"] == status
        response = client.post(
            "/v1/click", content=b'{"image": ', headers={"content-type": "application/json"}
        )
        assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
        huge = b'{"image": "' + b"A" * (23 * 2**20) + b'"}'
        response = client.post("/v1/click", content=huge, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "byte limit" in response.json()["error"]["message"]
        ok = client.post("/v1/click", json={"image": b64(data), "instruction": text, "user": 1})
        assert ok.status_code == 200 and ok.json()["x"] is not None
    assert "x" not in engine.loaded


def test_a_small_body_limit_counts_streamed_bodies_too(engine):
    with client_for(engine, max_image_bytes=1000) as client:

        def chunks():
            yield b'{"image": "'
            for _ in range(10):
                yield b"A" * 1000
            yield b'", "instruction": "a"}'

        response = client.post("/v1/click", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text


def test_openai_chat_completions_serves_global_and_user_models(engine, screens):
    data, text, _ = next(s for s in screens if s[2] == "habit")
    message = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(data)}},
            {"type": "text", "text": text},
        ],
    }
    with client_for(engine) as client:
        models = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert models == ["global", "user-1", "user-2"]
        for model, user in (("global", None), ("user-1", 1), ("user-2", 2)):
            response = client.post(
                "/v1/chat/completions", json={"model": model, "messages": [message], "max_tokens": 32}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            click = client.post(
                "/v1/click", json={"image": b64(data), "instruction": text, "user": user}
            ).json()
            assert body["object"] == "chat.completion" and body["model"] == model
            assert body["choices"][0]["message"] == {"role": "assistant", "content": click["answer"]}
            usage = body["usage"]
            assert usage["prompt_tokens"] > 20 and 0 < usage["completion_tokens"] <= 32
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        for body, status, words in [
            ({"model": "user-7", "messages": [message]}, 404, "no adapter for user '7'"),
            ({"model": "gpt-4o", "messages": [message]}, 404, "not served"),
            ({"model": "global", "messages": [message], "stop": ["\n"]}, 400, "stop is not supported"),
            ({"model": "global", "messages": [message], "logprobs": True}, 400, "logprobs is not supported"),
            (
                {"model": "global", "messages": [message], "stream_options": {"include_usage": True}},
                400,
                "stream_options",
            ),
            ({"model": "global", "messages": [message], "temperature": 3}, 422, "temperature"),
            ({"model": "global", "messages": [message], "n": 9}, 422, "n"),
            ({"model": "global", "messages": []}, 422, "messages"),
            ({"model": "global", "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
            (
                {
                    "model": "global",
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": {"url": "http://a/b.png"}}],
                        }
                    ],
                },
                400,
                "fetches no URL",
            ),  # fmt: skip
            (
                {"model": "global", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
                400,
                "text or image_url",
            ),  # fmt: skip
        ]:
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == status, response.text
            assert words in response.json()["error"]["message"]


def test_adapters_beyond_the_lru_are_evicted_and_reloaded_without_reloading_the_base(
    served_run, screens, monkeypatch
):
    import pigg.infer as agent_module

    loads = []
    real = agent_module.load_weights
    monkeypatch.setattr(agent_module, "load_weights", lambda *a, **k: loads.append(1) or real(*a, **k))
    engine = ServeEngine(served_run, adapters_in_memory=1)
    data, text, _ = next(s for s in screens if s[2] == "habit")
    with client_for(engine) as client:

        def ask(user):
            body = {"image": b64(data), "instruction": text, "user": user}
            return client.post("/v1/click", json=body).json()["answer"]

        first = {user: ask(user) for user in (None, "1", "2")}
        again = {user: ask(user) for user in ("1", None, "2", "1")}
    assert loads == [1]  # the global weights, once
    # 1, 2 (1 out), 1 (2 out), 2 (1 out), 1 (2 out): every switch between users reloads with one slot
    assert engine.stats.adapter_loads == 5 and engine.stats.adapter_evictions == 4
    assert list(engine.loaded) == ["1"]
    assert all(again[user] == first[user] for user in again)


def test_an_api_key_guards_every_endpoint_but_the_page(engine, screens):
    data, text, _ = screens[0]
    with client_for(engine, api_key="s3cret") as client:
        assert client.get("/").status_code == 200
        for method, path, body in [("get", "/health", None), ("get", "/v1/models", None), ("post", "/v1/click", {"image": b64(data), "instruction": text})]:  # fmt: skip
            kwargs = {"json": body} if body else {}
            response = getattr(client, method)(path, **kwargs)
            assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
            wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"}, **kwargs)
            assert wrong.status_code == 401
            right = getattr(client, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
            assert right.status_code == 200
    check_exposure("127.0.0.1", None)
    check_exposure("localhost", None)
    with pytest.raises(ConfigError, match="--api-key"):
        check_exposure("0.0.0.0", None)
    check_exposure("0.0.0.0", "s3cret")


def test_vllm_command_serves_the_global_model_with_every_pure_lora_user(served_run, tmp_path):
    command = vllm_command(served_run, "127.0.0.1", 8001)
    assert command[:3] == ["vllm", "serve", str(served_run)]
    assert command[command.index("--served-model-name") + 1] == "global"
    assert "--enable-lora" in command and command[command.index("--max-lora-rank") + 1] == "8"
    modules = command[command.index("--lora-modules") + 1 :]
    assert modules == [f"user-1={served_run / 'users' / '1'}", f"user-2={served_run / 'users' / '2'}"]
    # an adapter that trains modules in full is refused with the reason
    run = tmp_path / "run"
    shutil.copytree(served_run, run)
    config_path = run / "users" / "2" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "modules_to_save": ["lm_head"]}))
    with pytest.raises(ConfigError, match="modules_to_save"):
        vllm_command(run, "127.0.0.1", 8001)
    with pytest.raises(ConfigError, match="not a pigg run"):
        vllm_command(tmp_path, "127.0.0.1", 8001)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it where apt-get can)")
    pytest.importorskip("playwright", reason="playwright is in requirements-dev.txt")
    return path


def test_the_page_draws_the_click_in_a_real_headless_chromium(served_run, screens, tmp_path):
    """A real `pigg serve` process; Chromium uploads a screenshot on the page, asks as user 1, and the
    click drawn on the canvas is where /v1/click says."""
    import httpx
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    data, text, _ = next(s for s in screens if s[2] == "habit")
    screenshot = tmp_path / "screen.png"
    screenshot.write_bytes(data)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pigg", "serve", str(served_run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "pigg serve did not come up"
            time.sleep(0.3)
        expected = httpx.post(f"{base}/v1/click", json={"image": b64(data), "instruction": text, "user": 1}, timeout=60).json()  # fmt: skip
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=executable,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],  # fmt: skip
            )
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.set_input_files("#file", str(screenshot))
            page.fill("#instruction", text)
            page.select_option("#user", "1")
            page.click("#go")
            page.wait_for_selector("#result[data-done='1']", timeout=60_000)
            shown = page.eval_on_selector(
                "#result", "e => [Number(e.dataset.x), Number(e.dataset.y), e.textContent]"
            )
            pixel = page.evaluate(
                "([x, y]) => Array.from(document.getElementById('canvas').getContext('2d')"
                ".getImageData(Math.round(x), Math.round(y), 1, 1).data)",
                [expected["x"], expected["y"]],
            )
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert shown[:2] == [expected["x"], expected["y"]]
    assert expected["answer"] in shown[2] and "user 1" in shown[2]
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60  # the red cross is drawn at the click
    assert (tmp_path / "page.png").stat().st_size > 10_000


def _jobs(screens, adapters: list[str], **options) -> list[Job]:
    jobs = []
    for (data, text, _), adapter in zip(screens, adapters, strict=False):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        jobs.append(Job(adapter, click_messages(image, text), 32, image.size, **options))
    return jobs


def test_a_batch_mixing_users_answers_each_row_as_its_adapter_alone(served_run, engine, screens):
    """One generate for global and both users' rows (peft's adapter_names) gives every row the answer it
    gets alone; with one adapter slot the batch is cut into runs that fit, answers unchanged."""
    adapters = [GLOBAL, "1", "2", "1", GLOBAL, "2", "2", GLOBAL, "1", "1"]
    jobs = _jobs(screens, adapters)
    alone = [engine.run([job])[0].raw for job in jobs]
    before = dict(engine.stats.batch_sizes)
    assert [a.raw for a in engine.run(jobs)] == alone
    assert engine.stats.batch_sizes.get(10, 0) == before.get(10, 0) + 1  # one batch of all ten
    # the users' rows answered differently from the global model on the same screens
    assert [a.raw for a in engine.run(_jobs(screens, ["1"] * 10))] != [
        a.raw for a in engine.run(_jobs(screens, [GLOBAL] * 10))
    ]
    small = ServeEngine(served_run, adapters_in_memory=1)
    assert [a.raw for a in small.run(jobs)] == alone
    assert small.stats.batches == 5  # g 1 | 2 | 1 g | 2 2 g | 1 1: each run holds one user at most


def test_a_cancelled_row_stops_and_the_others_are_unchanged(engine, screens):
    jobs = _jobs(screens, [GLOBAL, "1", "2"])
    alone = [engine.run([job])[0] for job in jobs]
    jobs[1].cancelled.set()  # its client left while the batch was generating
    answers = engine.run(jobs)
    assert answers[1].completion_tokens == 1 and not answers[1].ended
    assert [a.raw for i, a in enumerate(answers) if i != 1] == [alone[0].raw, alone[2].raw]
    assert alone[1].completion_tokens > 1


def _events(response) -> list:
    """The data of each server-sent event; `[DONE]` as the string."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def _chat(data: bytes, text: str, model: str, **options) -> dict:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(data)}}
    return {
        "model": model,
        "messages": [{"role": "user", "content": [image, {"type": "text", "text": text}]}],
        **options,
    }


def test_streaming_sends_the_answer_as_generated_and_equals_the_plain_answer(engine, screens):
    data, text, _ = next(s for s in screens if s[2] == "habit")
    with client_for(engine) as client:
        for model in ("global", "user-1"):
            plain = client.post("/v1/chat/completions", json=_chat(data, text, model)).json()
            body = _chat(data, text, model, stream=True, stream_options={"include_usage": True})
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events = _events(response)
            assert events[-1] == "[DONE]"
            chunks = events[:-1]
            assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]]
            assert len(pieces) > 1 and all(pieces)  # token by token, not one block
            assert "".join(pieces) == plain["choices"][0]["message"]["content"]
            assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
        # an error found before the first byte stays a JSON error with its status
        response = client.post("/v1/chat/completions", json=_chat(data, text, "user-7", stream=True))
        assert response.status_code == 404 and "no adapter" in response.json()["error"]["message"]


def test_sampling_options_are_honoured(engine, screens):
    data, text, _ = screens[0]
    with client_for(engine) as client:

        def answers(**options) -> list[str]:
            response = client.post("/v1/chat/completions", json=_chat(data, text, "global", **options))
            assert response.status_code == 200, response.text
            return [c["message"]["content"] for c in response.json()["choices"]]

        greedy = answers()
        assert answers(n=3) == greedy * 3 and answers(temperature=0, seed=5) == greedy
        # sampled: a seed repeats the answers; other seeds give others (temperature 2 flattens the choice)
        sampled = answers(temperature=2.0, n=2, seed=7)
        assert answers(temperature=2.0, n=2, seed=7) == sampled and len(sampled) == 2
        others = {tuple(answers(temperature=2.0, seed=seed)) for seed in range(5)}
        assert len(others | {tuple(greedy)}) > 1
        # top_p alone samples at OpenAI's default temperature 1, as OpenAI does
        assert answers(top_p=0.5, seed=3) == answers(top_p=0.5, seed=3)


@pytest.fixture(scope="module")
def live(served_run):
    """A real `pigg serve` process on the served run (2 MiB screenshots at most); its base URL."""
    import asyncio

    from pigg.serve.bench import wait_ready

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "pigg",
        "serve",
        str(served_run),
        "--port",
        str(port),
        "--max-image-mb",
        "2",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(base, server))
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_official_openai_client_against_a_live_pigg_serve(live, engine, screens):
    import openai  # pinned in requirements-dev.txt: missing is a failure, not a skip

    data, text, _ = next(s for s in screens if s[2] == "habit")
    image = Image.open(io.BytesIO(data)).convert("RGB")
    expected = {
        model: engine.run([Job(adapter, click_messages(image, text), 32, image.size)])[0].raw
        for model, adapter in (("global", GLOBAL), ("user-1", "1"))
    }
    client = openai.OpenAI(base_url=f"{live}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["global", "user-1", "user-2"]
    for model, answer in expected.items():
        messages = _chat(data, text, model)["messages"]
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=32)
        assert reply.choices[0].message.content == answer and reply.choices[0].finish_reason == "stop"
        stream = client.chat.completions.create(model=model, messages=messages, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer
    with pytest.raises(openai.NotFoundError, match="no adapter for user '7'"):
        client.chat.completions.create(model="user-7", messages=messages)
    with pytest.raises(openai.BadRequestError, match="stop is not supported"):
        client.chat.completions.create(model="global", messages=messages, stop=["\n"])


def test_a_body_over_the_limit_is_answered_413_not_reset(live):
    import httpx

    limit = 2 * 2**20 * 4 // 3 + 64 * 1024
    body = b'{"image": "' + b"A" * (3 * limit) + b'", "instruction": "x"}'

    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    for content in (body, chunks()):  # with a Content-Length, and streamed without one
        response = httpx.post(
            f"{live}/v1/click", content=content, headers={"content-type": "application/json"}, timeout=60
        )
        assert response.status_code == 413
        assert f"over the {limit:,}-byte limit" in _error_shape(response)["message"]
    assert httpx.get(f"{live}/health", timeout=10).status_code == 200


def _error_shape(response) -> dict:
    """The one error shape: OpenAI's object, its code the status."""
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == response.status_code, error
    return error


def test_every_limit_is_checked_before_work_starts(engine, screens, monkeypatch):
    import pigg.serve.app as app_module

    data, text, _ = screens[0]
    decoded = []
    real = app_module.decode_image
    monkeypatch.setattr(app_module, "decode_image", lambda *a: decoded.append(1) or real(*a))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(data)}}
    many_images = {"model": "global", "messages": [{"role": "user", "content": [image] * 50 + [{"type": "text", "text": text}]}]}  # fmt: skip
    many_messages = {"model": "global", "messages": [{"role": "user", "content": text}] * 17}
    long_text = {"model": "global", "messages": [{"role": "user", "content": [image, {"type": "text", "text": "x" * 2001}]}]}  # fmt: skip
    before = engine.stats.requests
    with client_for(engine) as client:
        for body, words in [
            (many_images, "50 images, over the 4-image limit (--max-images)"),
            (many_messages, "17 messages, over the 16 limit"),
            (long_text, "2001 characters of text, over the 2000 limit"),
        ]:
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 400 and words in _error_shape(response)["message"]
        assert decoded == []  # refused before any screenshot was decoded
        bomb = {"image": b64(png_claiming(20000, 20000)), "instruction": text}
        response = client.post("/v1/click", json=bomb)
        assert response.status_code == 400 and "20000x20000" in _error_shape(response)["message"]
        assert engine.stats.requests == before  # nothing reached the engine
    with client_for(engine, max_images=60) as client:  # the limit is the server's setting
        assert client.post("/v1/chat/completions", json=many_images).status_code == 200


def test_every_error_has_the_one_shape(engine, screens, monkeypatch, caplog):
    data, text, _ = screens[0]
    with client_for(engine, raise_server_exceptions=False) as client:
        nested = b"[" * 100_000 + b"]" * 100_000  # valid JSON that Python's parser cannot nest so deep
        for method, path, kwargs, status in [
            ("post", "/v1/click", {"content": nested, "headers": {"content-type": "application/json"}}, 400),
            (
                "post",
                "/v1/click",
                {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}},
                400,
            ),
            ("get", "/v1/nothing", {}, 404),
            ("get", "/v1/click", {}, 405),
            ("post", "/v1/click", {"json": [1, 2]}, 422),
        ]:
            response = getattr(client, method)(path, **kwargs)
            assert response.status_code == status, response.text
            _error_shape(response)

        def broken(jobs):
            raise RuntimeError("the GPU fell over")

        monkeypatch.setattr(engine, "run", broken)
        with caplog.at_level("ERROR", logger="pigg.serve"):
            response = client.post("/v1/click", json={"image": b64(data), "instruction": text})
            # after the first byte of a stream, the failure is an event of the stream (OpenAI's way)
            with client.stream(
                "POST", "/v1/chat/completions", json=_chat(data, text, "global", stream=True)
            ) as streamed:
                events = _events(streamed)
        assert streamed.status_code == 200 and events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert "GPU fell over" in events[-1]["error"]["message"] and events[-1]["error"]["code"] == 500
    assert response.status_code == 500
    error = _error_shape(response)
    request_id = response.headers["x-request-id"]
    assert (
        error["type"] == "server_error"
        and request_id in error["message"]
        and "GPU fell over" in error["message"]
    )
    assert any(
        request_id in r.getMessage() and r.exc_info for r in caplog.records
    )  # logged with its traceback


# -- the API fuzzed: arbitrary and mutated requests to a live server, never a 5xx, never a hang ---------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=24,
)


def _small_png(width: int, height: int, color: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (color, 255 - color, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD_IMAGES = st.builds(_small_png, st.integers(1, 96), st.integers(1, 96), st.integers(0, 255)).map(b64)
IMAGES = st.one_of(
    GOOD_IMAGES,
    st.builds(png_claiming, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)).map(b64),
    st.binary(max_size=200).map(b64),
    st.builds(lambda data, cut: b64(data[:cut]), st.just(_small_png(40, 30, 7)), st.integers(0, 200)),
    st.text(max_size=60),
).flatmap(
    lambda image: st.sampled_from(
        [image, "data:image/png;base64," + image, "data:text/plain;base64," + image]
    )
)
USERS = st.one_of(st.none(), st.sampled_from(["1", "2", 1, "7", "../1", "", "global", "users/1"]), JSON)
SAMPLING = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.one_of(st.floats(-1, 3), st.floats()), "top_p": st.one_of(st.floats(-0.5, 1.5), st.floats()),
        "n": st.integers(-1, 10), "seed": st.integers(-(2**70), 2**70), "stream": st.booleans(),
        "max_tokens": st.integers(-5, 400), "stop": JSON, "stream_options": JSON, "logprobs": JSON,
    },
)  # fmt: skip


def _post(http, path: str, body):
    """As JSON the way Python writes it: NaN and Infinity included, which strict JSON has not."""
    return http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def _check(response) -> None:
    event(f"status {response.status_code}")  # the spread shows with --hypothesis-show-statistics
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        _error_shape(response)


@pytest.fixture(scope="module")
def http(live):
    import httpx

    with httpx.Client(base_url=live, timeout=60) as client:  # the timeout is the "never hangs" part
        yield client
        assert client.get("/health").json()["status"] == "ok"  # still serving after everything


fuzz_api = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None
)


@fuzz_api
@given(body=JSON, path=st.sampled_from(["/v1/click", "/v1/chat/completions"]))
def test_fuzz_arbitrary_json_bodies(http, body, path):
    _check(_post(http, path, body))


@fuzz_api
@given(
    raw=st.binary(max_size=300),
    kind=st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x", ""]),
    path=st.sampled_from(["/v1/click", "/v1/chat/completions"]),
)
def test_fuzz_raw_bodies_and_headers(http, raw, kind, path):
    _check(http.post(path, content=raw, headers={"content-type": kind} if kind else {}))


@fuzz_api
@given(
    image=st.one_of(GOOD_IMAGES, IMAGES), instruction=st.one_of(st.text(min_size=1, max_size=80), JSON), user=USERS,
    extra=st.dictionaries(st.sampled_from(["max_new_tokens", "x", "image"]), JSON, max_size=2),
    drop=st.sets(st.sampled_from(["image", "instruction"]), max_size=1),
)  # fmt: skip
def test_fuzz_mutated_click_requests(http, image, instruction, user, extra, drop):
    body = {"image": image, "instruction": instruction, "user": user, **extra}
    _check(_post(http, "/v1/click", {k: v for k, v in body.items() if k not in drop}))


@fuzz_api
@given(
    model=st.one_of(
        st.sampled_from(["global", "user-1", "user-2"]),
        st.sampled_from(["user-9", "user-../1"]),
        st.text(max_size=20),
    ),
    images=st.one_of(st.lists(GOOD_IMAGES, max_size=2), st.lists(IMAGES, max_size=6)),
    text=st.one_of(st.text(max_size=80), JSON),
    role=st.one_of(st.just("user"), st.sampled_from(["system", "assistant", "tool", 3])),
    sampling=SAMPLING,
)
def test_fuzz_mutated_chat_requests(http, model, images, text, role, sampling):
    parts = [{"type": "image_url", "image_url": {"url": image}} for image in images] + [
        {"type": "text", "text": text}
    ]
    body = {"model": model, "messages": [{"role": role, "content": parts}], **sampling}
    _check(_post(http, "/v1/chat/completions", body))
