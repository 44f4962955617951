"""``tnllm generate``: offline generation through the engine (all prompts share its batches)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError

from tnllm.protocol.jobs import GenerationParams
from tnllm.protocol.sampling import SamplingParams, error_message
from tnllm.text.prompt import render_prompt


def sampling_from_args(args: argparse.Namespace, default_max_new_tokens: int) -> SamplingParams:
    """The contract's SamplingParams from the flags, ``max_new_tokens`` resolved (ValidationError)."""
    given = {name: getattr(args, name, None) for name in SamplingParams.model_fields}
    return SamplingParams(**{k: v for k, v in given.items() if v is not None}).resolved(
        default_max_new_tokens
    )


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


def cmd_generate(settings: Any, args: argparse.Namespace) -> int:
    """Run every prompt through one engine together; print text, or one JSON object per prompt."""
    from tnllm.engine import EngineRequest, build_engine
    from tnllm.errors import RequestRejected

    try:
        params = sampling_from_args(args, settings.default_max_new_tokens)
    except ValidationError as err:
        print(f"tnllm generate: {error_message(err)}", file=sys.stderr)
        return 2
    over = {k: v for k, v in (("device", args.device), ("dtype", args.dtype)) if v}
    if over:
        settings = type(settings).model_validate({**settings.model_dump(), **over})
    engine = build_engine(settings.engine_config())
    prompts = _prompt_ids(args, engine.tokenizer, settings.system_prompt)
    reqs = [EngineRequest(f"cli-{i}", ids, params) for i, ids in enumerate(prompts)]
    try:
        results = engine.generate(reqs)
    except RequestRejected as err:
        print(f"tnllm generate: {err}", file=sys.stderr)
        return 2
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
