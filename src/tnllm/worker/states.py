"""The worker's side of state reuse (no tensors): prompts of continued jobs, conversations, pins.

- ``job_prompt``: a job's prompt ids, the turn boundaries the engine saves states at, and its
  conversation; a ``continue_from`` job builds on the earlier job's stored ``Conversation``
  (``tnllm.text.conversation.continuation_ids``), on whichever worker runs it: on the one holding
  the earlier state the engine resumes from it, elsewhere it recomputes the same ids.
- ``conversation_of``: what a succeeded job stores for its next turn.
- ``PrefixPins``: keeps this worker's engine pinning every listed prefix (``POST /v1/prefixes``)
  and the chat template's fixed head (the system turn), reconciled at every heartbeat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tnllm.engine.client import EngineClient
from tnllm.engine.types import EngineRequest, EngineResult, SamplingParams
from tnllm.protocol.jobs import ChatMessage, Conversation, GenerationParams
from tnllm.store.states import PrefixRecord, live_prefixes, load_conversation
from tnllm.text.conversation import continuation_ids, continued_turns, prefix_ids, prompt_and_points

log = logging.getLogger(__name__)

#: Pin tag of the chat template's fixed head (the default system turn).
HEAD_TAG = "head"


@dataclass
class JobPrompt:
    """A job's prompt as the engine gets it."""

    ids: list[int]
    points: tuple[int, ...]  # positions where the engine saves a state (turn ends)
    turns: list[dict[str, str]] | None  # the templated conversation (None: raw continuation text)


def job_prompt(tokenizer: Any, client: Any, params: GenerationParams, system_prompt: str | None) -> JobPrompt:
    """The prompt of a job (``ValueError`` naming the problem: no tokenizer, unknown earlier job)."""
    if tokenizer is None:
        raise ValueError("the model folder has no tokenizer.model: text prompts are not supported")
    if params.continue_from is None:
        ids, points, turns = prompt_and_points(tokenizer, params, system_prompt)
        return JobPrompt(ids, points, turns)
    parent = load_conversation(client, params.continue_from)
    if parent is None:
        raise ValueError(f"continue_from: job {params.continue_from!r} has no stored conversation (expired?)")
    ids = continuation_ids(tokenizer, parent, params)
    end = len(parent.ids) - (1 if parent.ids and parent.ids[-1] == tokenizer.eos_id else 0)
    points = (end,) if 0 < end < len(ids) and ids[:end] == parent.ids[:end] else ()
    return JobPrompt(ids, points, continued_turns(parent, params))


def conversation_of(prompt: JobPrompt, result: EngineResult, worker_id: str) -> Conversation:
    """What a succeeded job stores so that a later job can continue it."""
    turns = None if prompt.turns is None else [ChatMessage.model_validate(t) for t in prompt.turns]
    return Conversation(
        ids=[*prompt.ids, *result.token_ids], turns=turns, reply=result.text, worker=worker_id
    )


class PrefixPins:
    """Which prefixes this worker's engine pins; ``sync`` makes it match the listed ones."""

    def __init__(self, client: Any, system_prompt: str | None) -> None:
        self.client = client
        self.system_prompt = system_prompt
        self.pinned: dict[str, int] = {}  # prefix id -> its tokens

    def warm_head(self, engine: EngineClient) -> None:
        """Pin the state of the default system turn, which begins every conversation without one."""
        tok = engine.tokenizer
        if tok is None or not self.system_prompt:
            return
        turns = [{"role": "system", "content": self.system_prompt}]
        ids = list(tok.encode(tok.apply_chat_template(turns, add_generation_prompt=False)))
        self._pin(engine, HEAD_TAG, ids)

    def sync(self, engine: EngineClient) -> None:
        """Pin new prefixes and unpin deleted ones (called from the heartbeat thread)."""
        wanted = live_prefixes(self.client)
        for prefix_id in [p for p in self.pinned if p not in wanted]:
            engine.unpin(tag(prefix_id))
            del self.pinned[prefix_id]
            log.info("prefix %s unpinned", prefix_id)
        for prefix_id, record in wanted.items():
            if prefix_id not in self.pinned:
                self.pinned[prefix_id] = self._pin_record(engine, record)

    def _pin_record(self, engine: EngineClient, record: PrefixRecord) -> int:
        params = GenerationParams(prompt=record.prompt, messages=record.messages)
        try:
            ids = prefix_ids(engine.tokenizer, params, self.system_prompt)
        except ValueError as exc:
            log.warning("prefix %s cannot be rendered (%s); not pinned", record.id, exc)
            return 0
        self._pin(engine, tag(record.id), ids)
        return len(ids)

    def _pin(self, engine: EngineClient, pin: str, ids: list[int]) -> None:
        if len(ids) < 2:
            return
        params = SamplingParams(max_new_tokens=1, ignore_eos=True)
        try:  # the engine prefills it and pins the prompt's state; the one sampled token is dropped
            engine.submit(EngineRequest(f"pin:{pin}", ids, params, pin=pin))
        except ValueError as exc:  # too long for this engine's context, or already being pinned
            log.warning("prefix %s not pinned: %s", pin, exc)
            return
        log.info("prefix %s: pinning %d tokens", pin, len(ids))


def tag(prefix_id: str) -> str:
    """The engine's pin tag of a listed prefix."""
    return f"prefix:{prefix_id}"
