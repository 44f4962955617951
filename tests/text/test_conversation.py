"""Token ids for state reuse: continuations extend the earlier ids exactly, turn ends, prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tnllm.protocol.jobs import ChatMessage, Conversation, GenerationParams
from tnllm.text.conversation import continuation_ids, continued_turns, prefix_ids, prompt_and_points
from tnllm.text.prompt import render_prompt
from tnllm.text.tokenizer import Tokenizer

SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def tok(demo_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(demo_tokenizer_dir)


def chat(*turns: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=r, content=c) for r, c in turns]  # type: ignore[arg-type]


def first_turn(tok: Tokenizer, reply_ids: list[int]) -> Conversation:
    job = GenerationParams(messages=chat(("user", "What is a state?")))
    ids, _, turns = prompt_and_points(tok, job, SYSTEM)
    reply = tok.decode(reply_ids)
    return Conversation(
        ids=[*ids, *reply_ids],
        turns=chat(*((t["role"], t["content"]) for t in turns)),
        reply=reply,
        worker="w",
    )


def test_a_fresh_prompt_is_render_prompts_with_its_turn_ends(tok: Tokenizer) -> None:
    job = GenerationParams(messages=chat(("user", "hey"), ("assistant", "yo"), ("user", "again")))
    ids, points, turns = prompt_and_points(tok, job, SYSTEM)
    assert ids == render_prompt(tok, job, SYSTEM) and turns[0]["role"] == "system"
    assert len(points) == 4 and list(points) == sorted(points) and points[-1] < len(ids)
    for k, p in enumerate(points, start=1):  # each is the token count of the first k turns alone
        assert ids[:p] == tok.encode(tok.apply_chat_template(turns[:k], add_generation_prompt=False))


def test_a_continuation_extends_the_earlier_ids_exactly(tok: Tokenizer) -> None:
    reply_ids = tok.encode("A fixed-size summary of the past.", add_special_tokens=False)
    parent = first_turn(tok, [*reply_ids[:-1], 77, tok.eos_id or 2])  # ids the tokenizer would not make
    job = GenerationParams(messages=chat(("user", "And its size?")), continue_from="j1")
    ids = continuation_ids(tok, parent, job)
    assert ids[: len(parent.ids) - 1] == parent.ids[:-1], "the earlier ids, as generated, minus the EOS"
    tail = tok.decode(ids[len(parent.ids) - 1 :], skip_special_tokens=False)
    assert tail.startswith("<|im_end|>\n<|im_start|>user\nAnd its size?") and tail.endswith("assistant\n")
    turns = continued_turns(parent, job)
    assert turns is not None and [t["role"] for t in turns] == ["system", "user", "assistant", "user"]
    raw = continuation_ids(tok, parent, GenerationParams(prompt=" more text", continue_from="j1"))
    assert raw[: len(parent.ids) - 1] == parent.ids[:-1] and tok.decode(raw).endswith("more text")


def test_messages_cannot_follow_a_raw_continuation(tok: Tokenizer) -> None:
    parent = Conversation(ids=[5, 6], turns=None, reply="x", worker="w")
    with pytest.raises(ValueError, match="raw text"):
        continuation_ids(tok, parent, GenerationParams(messages=chat(("user", "q"))))


def test_a_template_that_rewrites_earlier_turns_renders_the_whole_conversation(
    demo_tokenizer_dir: Path,
) -> None:
    # numbers every turn with the conversation's length: the earlier rendering is never a prefix
    template = "{% for m in messages %}[{{ messages|length }}]{{ m['content'] }}\n{% endfor %}"
    tok = Tokenizer.from_pretrained(demo_tokenizer_dir, chat_template=template)
    parent = first_turn(tok, tok.encode("ok", add_special_tokens=False))
    job = GenerationParams(messages=chat(("user", "next")))
    turns = continued_turns(parent, job)
    assert turns is not None
    assert continuation_ids(tok, parent, job) == tok.encode(tok.apply_chat_template(turns))


@pytest.mark.parametrize("kind", ["messages", "prompt"])
def test_a_prefix_is_a_prefix_of_the_jobs_that_start_with_it(tok: Tokenizer, kind: str) -> None:
    doc = "Manual: the state holds the past. " * 5
    if kind == "messages":
        pre = GenerationParams(messages=chat(("user", doc)))
        later = [GenerationParams(messages=chat(("user", doc), ("user", q))) for q in ("a?", "Why not.")]
    else:
        pre = GenerationParams(prompt=doc)
        later = [GenerationParams(prompt=doc + q) for q in ("a?", "\nWhy not.", " and more")]
    ids = prefix_ids(tok, pre, SYSTEM)
    assert len(ids) > 40
    for job in later:
        assert render_prompt(tok, job, SYSTEM)[: len(ids)] == ids
