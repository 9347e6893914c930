"""Draw docs/serving/page.png: `pigg serve RUN` in a real headless Chromium, a held-out habit screen of
user 1 uploaded on the page and asked as user 1.

    .venv/bin/python docs/serving/page.py demo_out/runs/global   # after `make demo` and `make browser`
"""

import asyncio
import base64
import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from pigg.data.synth.screens import HABIT_PHRASES
from pigg.serve.bench import bench_requests, start_server, wait_ready
from pigg.serve.server import free_port


def _landscape(image_b64: str) -> bool:
    width, height = Image.open(io.BytesIO(base64.b64decode(image_b64))).size
    return width > height


def main(run_dir: Path, out: Path) -> None:
    requests = bench_requests(run_dir, 200, ["1"])
    habit = next(r for r in requests if r["instruction"] in HABIT_PHRASES and _landscape(r["image"]))
    port = free_port()
    server = start_server(run_dir, port, max_batch=1, max_wait_ms=0)
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_ready(base, server))
        with tempfile.TemporaryDirectory() as scratch, sync_playwright() as p:
            screenshot = Path(scratch) / "screen.png"
            screenshot.write_bytes(base64.b64decode(habit["image"]))
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(base + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.set_input_files("#file", str(screenshot))
            page.fill("#instruction", habit["instruction"])
            page.select_option("#user", "1")
            page.click("#go")
            page.wait_for_selector("#result[data-done='1']", timeout=60_000)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).with_name("page.png"))
