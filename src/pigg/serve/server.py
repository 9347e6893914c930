"""Starting `pigg serve`: the in-process server (uvicorn), or the command line that serves the same run
under vLLM's OpenAI server on a GPU."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
from pathlib import Path

from pigg.errors import ConfigError
from pigg.infer import ADAPTER_CONFIG, USERS_DIR

# the ranks vLLM's LoRA kernels are built for (--max-lora-rank must be one of them)
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """Every user's agent answers anyone who can reach the port: off loopback, a key is required."""
    if not is_loopback(host) and not api_key:
        raise ConfigError(
            f"--host {host} makes the server reachable from other machines: give --api-key (or set "
            "PIGG_API_KEY) so only clients with the key are answered, or bind to 127.0.0.1"
        )


def serve(run_dir, host: str, port: int, settings, adapters_in_memory: int, mixed: bool = True) -> None:
    import uvicorn

    from pigg.serve.app import create_app
    from pigg.serve.engine import ServeEngine

    check_exposure(host, settings.api_key)
    engine = ServeEngine(run_dir, adapters_in_memory, settings.max_new_tokens, mixed=mixed)
    app = create_app(engine, settings)
    users = engine.users()
    print(
        f"serving {run_dir}: the global agent and {len(users)} user adapter(s) "
        f"({', '.join(users) or 'none yet'}) on http://{host}:{port}/ "
        f"(batches of up to {settings.max_batch}, {settings.max_wait_ms:g} ms wait, "
        f"{'users mixed in a batch' if mixed else 'one adapter a batch'})",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- vLLM ------------------------------------------------------------------------------------------------
def vllm_adapters(run_dir: Path) -> dict[str, Path]:
    """user-<id> → adapter folder, for every user adapter vLLM can load; a clear error for one it cannot
    (vLLM serves pure LoRA: no fully trained modules beside it, `modules_to_save`)."""
    adapters = {}
    for folder in sorted((run_dir / USERS_DIR).glob(f"*/{ADAPTER_CONFIG}")):
        config = json.loads(folder.read_text())
        saved = config.get("modules_to_save")
        if saved:
            raise ConfigError(
                f"{folder.parent}: the adapter also trains {saved} in full (modules_to_save); vLLM serves "
                "pure LoRA adapters only. Serve it with pigg's own engine, or merge it (`pigg merge`)."
            )
        if config.get("peft_type", "LORA") != "LORA":
            raise ConfigError(f"{folder.parent}: a {config.get('peft_type')} adapter; vLLM serves LoRA only")
        adapters[f"user-{folder.parent.name}"] = folder.parent
    return adapters


def vllm_command(
    run_dir: str | Path,
    host: str,
    port: int,
    merged: str | Path | None = None,
    max_loras: int = 8,
) -> list[str]:
    """`vllm serve` for the run's global model with every user's adapter as a LoRA module."""
    run_dir = Path(run_dir)
    if not (run_dir / "pigg_run.json").exists():
        raise ConfigError(f"{run_dir} is not a pigg run folder (no pigg_run.json); give the global run")
    model = Path(merged) if merged else run_dir
    if (model / ADAPTER_CONFIG).exists():
        raise ConfigError(
            f"{run_dir} is a LoRA run: vLLM needs the global adapter merged into full weights first; "
            f"`pigg merge {run_dir} --out MERGED`, then `pigg serve {run_dir} --engine vllm --merged MERGED`"
        )
    if not (model / "config.json").exists():
        raise ConfigError(f"{model} holds no model (no config.json)")
    adapters = vllm_adapters(run_dir)
    command = [
        "vllm",
        "serve",
        str(model),
        "--served-model-name",
        "global",
        "--host",
        host,
        "--port",
        str(port),
    ]
    if adapters:
        ranks = [json.loads((p / ADAPTER_CONFIG).read_text()).get("r", 8) for p in adapters.values()]
        rank = next((r for r in VLLM_RANKS if r >= max(ranks)), None)
        if rank is None:
            raise ConfigError(f"adapter rank {max(ranks)} is over vLLM's largest, {VLLM_RANKS[-1]}")
        command += [
            "--enable-lora",
            "--max-lora-rank",
            str(rank),
            "--max-loras",
            str(min(max_loras, len(adapters))),
        ]
        command += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return command


def run_vllm(command: list[str], api_key: str | None) -> None:
    """Replace this process with vLLM's server (the key goes through its environment, not the command
    line that `ps` shows)."""
    import os

    if shutil.which(command[0]) is None:
        raise ConfigError(
            "vLLM is not installed here (pip install 'pigg[vllm]' on a CUDA machine); the command it would run:\n  "
            + " ".join(command)
        )
    if api_key:
        os.environ["VLLM_API_KEY"] = api_key
    os.execvp(command[0], command)
