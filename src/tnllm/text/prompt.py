"""One prompt renderer: a job's prompt or messages → the conversation → prompt text → token ids.

The API's prompt counter, the worker and ``tnllm generate`` all call ``render_prompt``, so the count
the API checks is the length of the prompt the engine gets. The default system message
(Settings.system_prompt) is added here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tnllm.protocol.jobs import GenerationParams
from tnllm.text.chat import validate_messages

if TYPE_CHECKING:
    from tnllm.text.tokenizer import Tokenizer


def conversation(job: GenerationParams, system_prompt: str | None) -> list[dict[str, str]]:
    """The turns to template: ``messages`` as given, or ``prompt`` as one user turn; the default
    system message goes first when the conversation has none (``None`` or ``""``: none added)."""
    if job.messages is not None:
        turns = validate_messages([m.model_dump() for m in job.messages])
    else:
        turns = [{"role": "user", "content": job.prompt or ""}]
    if system_prompt and not any(t["role"] == "system" for t in turns):
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def render_prompt_text(tokenizer: Tokenizer, job: GenerationParams, system_prompt: str | None) -> str:
    """The prompt text of a job: its conversation through the chat template, ready for the reply;
    a ``raw_prompt`` job's ``prompt`` as it is (no template, no system message)."""
    if job.raw_prompt and job.prompt is not None:
        return job.prompt
    return tokenizer.apply_chat_template(conversation(job, system_prompt), add_generation_prompt=True)


def render_prompt(tokenizer: Tokenizer, job: GenerationParams, system_prompt: str | None) -> list[int]:
    """The prompt token ids of a job; ``ValueError`` (TokenizerError) for a conversation the
    template refuses."""
    return list(tokenizer.encode(render_prompt_text(tokenizer, job, system_prompt)))
