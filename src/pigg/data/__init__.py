"""Samples, readers, validation, rendering (ids + labels) and synthetic GUI data."""
