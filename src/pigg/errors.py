"""Errors pigg raises on purpose: each says where the problem is and how to fix it."""


class PiggError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(PiggError):
    """The experiment config is invalid (unknown key, wrong type, impossible combination)."""


class DataError(PiggError):
    """The data set cannot be used as it is (malformed rows, missing images, over-long samples)."""


class UnsafePickleError(DataError):
    """A pickle names a global outside pigg's allow-list; nothing in it was executed."""
