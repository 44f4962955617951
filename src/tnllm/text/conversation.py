"""Token ids for state reuse: continued conversations, turn boundaries, pinned prefixes (torch-free).

- ``continuation_ids``: a ``continue_from`` job's prompt is the earlier job's ids exactly as the
  engine ran and generated them (prompt + reply; a final EOS dropped: the template's turn end
  stands for it) followed by the tokens of what the template adds after the reply (its turn end,
  the new turns, the generation prompt), or of the raw ``prompt`` text. Re-tokenising the whole
  rendered conversation would not give the same ids (the reply's generated ids are rarely what
  the tokenizer makes of its text), so the earlier state could never be reused; building on the
  stored ids keeps it an exact prefix, whichever worker computes it. A template whose rendering of
  the longer conversation does not begin with the earlier rendering (one that rewrites earlier
  turns) gets the whole conversation re-tokenised instead (no state to reuse but the prefixes).
- ``turn_points``: the token positions where each turn of a rendered conversation ends, where the
  engine saves states (two prompts sharing their first turns resume from there).
- ``prefix_ids``: the tokens of a prefix to pin (``POST /v1/prefixes``): a conversation's turns, or
  the start of a user turn holding ``prompt``, cut where any continuation tokenises the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tnllm.protocol.jobs import ChatMessage, Conversation, GenerationParams
from tnllm.text.chat import validate_messages
from tnllm.text.prompt import conversation, render_prompt

if TYPE_CHECKING:
    from tnllm.text.tokenizer import Tokenizer

#: Characters of the text before a suffix that are tokenised with it (so its first token is what the
#: tokenizer makes of it in context, not after a fresh start).
CONTEXT_CHARS = 32
#: Turn ends that get a saved state: the first few and the last few turns of a conversation.
HEAD_TURNS = 2
TAIL_TURNS = 8
#: Continuations tried after a prefix: its ids are cut where they all agree.
_PROBES = ("\n", " ", "a", ".", "<")
_MARK = "\x00tnllm-prefix-end\x00"


def continued_turns(parent: Conversation, job: GenerationParams) -> list[dict[str, str]] | None:
    """The conversation of a ``continue_from`` job with ``messages`` (None for raw ``prompt`` text)."""
    if job.messages is None:
        return None
    if parent.turns is None:
        raise ValueError(
            "continue_from: that job continued raw text; continue it with 'prompt', not 'messages'"
        )
    new = validate_messages([m.model_dump() for m in job.messages])
    return [*_dicts(parent.turns), {"role": "assistant", "content": parent.reply}, *new]


def continuation_ids(tokenizer: Tokenizer, parent: Conversation, job: GenerationParams) -> list[int]:
    """The prompt ids of a ``continue_from`` job (module docstring)."""
    base = list(parent.ids)
    if base and tokenizer.eos_id is not None and base[-1] == tokenizer.eos_id:
        base.pop()
    if job.messages is None:
        return base + encode_after(tokenizer, tokenizer.decode(base[-CONTEXT_CHARS:]), job.prompt or "")
    turns = continued_turns(parent, job)
    assert turns is not None and parent.turns is not None
    before = tokenizer.apply_chat_template(_dicts(parent.turns), add_generation_prompt=True) + parent.reply
    after = tokenizer.apply_chat_template(turns, add_generation_prompt=True)
    if not after.startswith(before):
        return list(tokenizer.encode(after))
    return base + encode_after(tokenizer, before, after[len(before) :])


def encode_after(tokenizer: Tokenizer, before: str, text: str) -> list[int]:
    """Ids of ``text`` as it tokenises after ``before`` (its last ``CONTEXT_CHARS`` characters),
    when that is a clean split; else ``text`` on its own."""
    context = before[-CONTEXT_CHARS:]
    head = tokenizer.encode(context, add_special_tokens=False)
    both = tokenizer.encode(context + text, add_special_tokens=False)
    if context and both[: len(head)] == head:
        return both[len(head) :]
    return tokenizer.encode(text, add_special_tokens=False)


def turn_points(tokenizer: Tokenizer, turns: list[dict[str, str]], ids: list[int]) -> tuple[int, ...]:
    """Positions in ``ids`` (the rendered ``turns``) where a turn ends and the ids so far are exactly
    those of the turns so far on their own: after the first ``HEAD_TURNS`` turns (system message,
    shared document) and the last ``TAIL_TURNS`` (each one is rendered and tokenised again)."""
    n = len(turns)
    points = []
    for k in sorted({*range(1, min(HEAD_TURNS, n) + 1), *range(max(1, n - TAIL_TURNS + 1), n + 1)}):
        head = tokenizer.encode(tokenizer.apply_chat_template(turns[:k], add_generation_prompt=False))
        if 0 < len(head) < len(ids) and ids[: len(head)] == head:
            points.append(len(head))
    return tuple(points)


def prompt_and_points(
    tokenizer: Tokenizer, job: GenerationParams, system_prompt: str | None
) -> tuple[list[int], tuple[int, ...], list[dict[str, str]]]:
    """A fresh job's prompt ids (as ``render_prompt``), its turn boundaries and its conversation.
    A ``raw_prompt`` job's ids are its text's (no template, so no turn boundaries)."""
    turns = conversation(job, system_prompt)
    ids = render_prompt(tokenizer, job, system_prompt)
    if job.raw_prompt and job.prompt is not None:
        return ids, (), turns
    return ids, turn_points(tokenizer, turns, ids), turns


def prefix_ids(tokenizer: Tokenizer, job: GenerationParams, system_prompt: str | None) -> list[int]:
    """The ids of a prefix to pin: ``messages`` (the default system message first, as for a job) as
    complete turns, or the rendered conversation up to the end of ``prompt`` inside its user turn;
    cut to where every probe continuation tokenises the same."""
    if job.messages is not None:
        text = tokenizer.apply_chat_template(conversation(job, system_prompt), add_generation_prompt=False)
    else:
        marked = job.model_copy(update={"prompt": (job.prompt or "") + _MARK})
        rendered = tokenizer.apply_chat_template(
            conversation(marked, system_prompt), add_generation_prompt=True
        )
        text = rendered[: rendered.index(_MARK)]
    ids = list(tokenizer.encode(text))
    for probe in _PROBES:
        longer = tokenizer.encode(text + probe)
        n = next((i for i, (a, b) in enumerate(zip(ids, longer, strict=False)) if a != b), len(ids))
        ids = ids[:n]
    return ids


def _dicts(turns: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": t.role, "content": t.content} for t in turns]
