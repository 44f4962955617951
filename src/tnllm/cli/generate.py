"""``tnllm generate``: offline generation through the engine (all prompts share its batches).

Its input is validated as the API validates a job (the ``JobCreate`` contract: a non-empty prompt,
the sampling ranges) before anything loads; a model that cannot be used or a refused request is one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tnllm.cli.flags import sampling_fields
from tnllm.cli.hints import model_error
from tnllm.config import DEMO_MODEL, model_folder
from tnllm.errors import ModelResolutionError, RequestError, TnllmError
from tnllm.protocol.http import JobCreate
from tnllm.protocol.jobs import GenerationParams
from tnllm.protocol.sampling import SamplingParams, error_message
from tnllm.text.prompt import render_prompt


def sampling_from_args(args: argparse.Namespace, default_max_new_tokens: int) -> SamplingParams:
    """The contract's SamplingParams from the flags, ``max_new_tokens`` resolved (ValidationError)."""
    return SamplingParams(**sampling_fields(args)).resolved(default_max_new_tokens)


def _check_prompts(args: argparse.Namespace) -> None:
    """Each ``--prompt`` as the API checks a job's prompt (ValidationError naming ``prompt``)."""
    for text in args.prompt or ():
        JobCreate(prompt=text)


def _prompt_ids(args: argparse.Namespace, tokenizer: Any, system_prompt: str) -> list[list[int]]:
    if args.prompt_ids:
        try:
            return [[int(t) for t in p.replace(" ", "").split(",") if t] for p in args.prompt_ids]
        except ValueError as err:
            raise SystemExit(f"tnllm generate: --prompt-ids takes comma-separated integers ({err})") from None
    if tokenizer is None:
        raise SystemExit("tnllm generate: this checkpoint has no tokenizer.model; use --prompt-ids")
    if args.raw:
        return [tokenizer.encode(t) for t in args.prompt]
    return [render_prompt(tokenizer, GenerationParams(prompt=p), system_prompt) for p in args.prompt]


def _say_where_the_demo_goes(settings: Any) -> None:
    """The demo checkpoint is written on first use: say where (it is the data dir's, not a secret)."""
    folder = model_folder(settings.model, Path(settings.data_dir))
    if settings.model.strip() == DEMO_MODEL and folder is not None and not folder.exists():
        where = folder.resolve()
        print(f"tnllm generate: writing the demo checkpoint to {where} (in TNLLM_DATA_DIR)", file=sys.stderr)


def cmd_generate(settings: Any, args: argparse.Namespace) -> int:
    """Run every prompt through one engine together; print text, or one JSON object per prompt."""
    from tnllm.engine import EngineRequest, build_engine

    try:
        _check_prompts(args)
        params = sampling_from_args(args, settings.default_max_new_tokens)
    except ValidationError as err:
        print(f"tnllm generate: {error_message(err)}", file=sys.stderr)
        return 2
    over = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v}
    if over:
        settings = type(settings).model_validate({**settings.model_dump(), **over})
    _say_where_the_demo_goes(settings)
    try:
        engine = build_engine(settings.engine_config())
        prompts = _prompt_ids(args, engine.tokenizer, settings.system_prompt)
        reqs = [EngineRequest(f"cli-{i}", ids, params) for i, ids in enumerate(prompts)]
        results = engine.generate(reqs)
    except TnllmError as err:  # the model cannot be used, or the engine refused a request
        text = model_error(err, "generate") if isinstance(err, ModelResolutionError) else str(err)
        print(f"tnllm generate: {text}", file=sys.stderr)
        return 2 if isinstance(err, RequestError) else 1
    for ids, res in zip(prompts, results, strict=True):
        if args.json:
            obj: dict[str, Any] = {"prompt_ids": ids, "ids": res.token_ids}
            if engine.tokenizer is not None:
                obj["text"] = res.text
            obj["finish_reason"] = res.finish_reason
            if len(res.choices) > 1:  # n > 1: every choice (the keys above are choice 0's)
                obj["choices"] = [
                    {"index": c.index, "ids": c.token_ids, "text": c.text, "finish_reason": c.finish_reason}
                    for c in res.choices
                ]
            print(json.dumps(obj, ensure_ascii=False), flush=True)
        else:
            print(res.text if engine.tokenizer is not None else " ".join(map(str, res.token_ids)), flush=True)
    return 0
