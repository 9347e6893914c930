"""Errors pigg raises on purpose: each says where the problem is and how to fix it."""

import contextlib
from collections.abc import Iterator


class PiggError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(PiggError):
    """The experiment config is invalid (unknown key, wrong type, impossible combination)."""


class DataError(PiggError):
    """The data set cannot be used as it is (malformed rows, missing images, over-long samples)."""


class UnsafePickleError(DataError):
    """A pickle names a global outside pigg's allow-list; nothing in it was executed."""


@contextlib.contextmanager
def reading(what: object) -> Iterator[None]:
    """Label any unexpected exception that escapes the block with the input being read (the innermost
    label wins), so the CLI can say where pigg broke without showing a traceback."""
    try:
        yield
    except PiggError:
        raise
    except Exception as exc:
        if not hasattr(exc, "pigg_input"):
            exc.pigg_input = str(what)
        raise
