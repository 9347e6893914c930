"""pigg's optional dependencies (the extras of `pip install 'pigg[...]'`): which modules each brings, and
one clear line, instead of an ImportError traceback, when a command needs one that is not installed."""

from __future__ import annotations

import importlib.util
import sys

from pigg.errors import ConfigError

# extra -> the modules pigg uses from it (tests/test_package.py checks this against pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "starlette", "uvicorn", "httpx"),
    "qlora": ("bitsandbytes",),
    "deepspeed": ("deepspeed",),
    "liger": ("liger_kernel",),
    "vllm": ("vllm",),
    "rl": ("trl",),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (a module set to None in sys.modules,
    as tests do to hide one, counts as missing)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def require(extra: str, purpose: str) -> None:
    """Stop with one line naming the extra when `purpose` (a command or setting) needs it and a module of
    it is missing."""
    missing = [m for m in EXTRAS[extra] if not installed(m)]
    if missing:
        raise ConfigError(
            f"{purpose} needs the {extra} extra ({', '.join(missing)} not installed): pip install 'pigg[{extra}]'"
        )
