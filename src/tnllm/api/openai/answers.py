"""Job records → OpenAI's answers: a choice per job choice (``JobResult.choices``, ``n`` per
prompt), finish reasons, usage, and the log probabilities in OpenAI's two shapes (chat
``logprobs.content``; completions ``tokens`` / ``token_logprobs`` / ``top_logprobs`` /
``text_offset``)."""

from __future__ import annotations

from typing import Any

from tnllm.api.openai.schemas import (
    ChatChoice,
    ChatCompletion,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    Usage,
)
from tnllm.protocol.jobs import JobRecord
from tnllm.protocol.outputs import Choice, TokenLogprob


def choices(record: JobRecord) -> list[Choice]:
    """The choices of a succeeded job (one built from ``text`` for records without ``choices``)."""
    result = record.result
    assert result is not None
    return list(result.choices) or [Choice(index=0, text=result.text, finish_reason=result.finish_reason)]


def reason(finish: str) -> str:
    """OpenAI's finish reason (a stop string, EOS or a complete grammar are all ``stop``)."""
    return "length" if finish == "length" else "stop"


def chat_logprobs(entries: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """``logprobs`` of a chat choice: ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal"}``."""
    if entries is None:
        return None
    content = [
        {
            "token": e.token,
            "logprob": e.logprob,
            "bytes": e.bytes,
            "top_logprobs": [
                {"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in e.top_logprobs
            ],
        }
        for e in entries
    ]
    return {"content": content, "refusal": None}


def text_logprobs(entries: list[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """``logprobs`` of a completion choice (the legacy shape); ``offset``: characters before them."""
    if entries is None:
        return None
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
        "text_offset": offsets,
    }


def usage(records: list[JobRecord]) -> Usage:
    """Summed usage of the jobs of one answer (each job's completion tokens count all its choices)."""
    prompt = sum(r.result.usage.prompt_tokens for r in records if r.result)
    completion = sum(r.result.usage.completion_tokens for r in records if r.result)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def chat_completion(base: dict[str, Any], records: list[JobRecord]) -> ChatCompletion:
    """The chat completion of succeeded jobs (``base``: id, created, model)."""
    out = [c for r in records for c in choices(r)]
    answer = [
        ChatChoice(
            index=i,
            message=ChatMessageOut(content=c.text),
            finish_reason=reason(c.finish_reason),
            logprobs=chat_logprobs(c.logprobs),
        )
        for i, c in enumerate(out)
    ]
    return ChatCompletion(**base, choices=answer, usage=usage(records))


def text_completion(base: dict[str, Any], records: list[JobRecord]) -> Completion:
    """The completion of succeeded jobs: prompt ``p``'s choice ``j`` has ``index`` ``p * n + j``."""
    out = [c for r in records for c in choices(r)]
    answer = [
        CompletionChoice(
            index=i, text=c.text, finish_reason=reason(c.finish_reason), logprobs=text_logprobs(c.logprobs)
        )
        for i, c in enumerate(out)
    ]
    return Completion(**base, choices=answer, usage=usage(records))
