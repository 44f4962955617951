"""Typed errors of the model package (torch-free so callers can catch them without importing torch)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint folder, config or weight file that cannot be used; the message names the file."""


class ConfigError(CheckpointError):
    """A config.json that is not an official TransNormerLLM config, or has unusable values."""
