"""The way out of a missing model, in the spelling of the command the person actually ran."""

from __future__ import annotations

from tnllm.errors import ModelResolutionError, ModelUnavailable


def model_hint(command: str, *, from_make: bool = False) -> str:
    """What to run instead: ``make run MODEL=demo`` from make, ``tnllm up --model demo`` from
    tnllm; ``tnllm download`` has no ``--model``, so it points at ``tnllm up``."""
    if from_make:
        return "run `make run MODEL=demo` for a random demo checkpoint, or `make run MODEL=/path/to/folder`"
    if command == "download":
        return "check the model id and the network, or serve a random demo model: `tnllm up --model demo`"
    return (
        f"run `tnllm {command} --model demo` for a random demo checkpoint, "
        f"or `tnllm {command} --model /path/to/checkpoint` for a local folder"
    )


def model_error(exc: ModelResolutionError, command: str, *, from_make: bool = False) -> str:
    """The error's message, with the hint where another model would do."""
    if isinstance(exc, ModelUnavailable):
        return f"{exc}; {model_hint(command, from_make=from_make)}"
    return str(exc)
