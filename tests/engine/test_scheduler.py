"""Scheduler planning: admission into free slots, the prefill token budget, retirement."""

from __future__ import annotations

from tnllm.engine.scheduler import Scheduler, Sequence


def seq(rid: str, n_prompt: int, max_new: int = 4) -> Sequence:
    return Sequence(rid, list(range(1, n_prompt + 1)), max_new, None)


def test_more_requests_than_slots_wait_fifo_and_slots_are_reused() -> None:
    s = Scheduler(slots=2, prefill_token_budget=100)
    a, b, c = seq("a", 3), seq("b", 3), seq("c", 3)
    for x in (a, b, c):
        s.add(x)
    plan = s.schedule()
    assert [ch.seq for ch in plan.prefill] == [a, b] and s.num_waiting == 1 and c.slot == -1
    s.finish(a)
    plan = s.schedule()
    assert c.slot == 0 and [ch.seq for ch in plan.prefill] == [b, c]  # b never ran its prefill


def test_prefill_budget_chunks_long_prompts_and_decodes_keep_running() -> None:
    s = Scheduler(slots=4, prefill_token_budget=10)
    short, long_ = seq("short", 4), seq("long", 25)
    s.add(short)
    s.add(long_)
    plan = s.schedule()
    assert [(ch.seq.request_id, ch.start, ch.length) for ch in plan.prefill] == [
        ("short", 0, 4),
        ("long", 0, 6),
    ]
    for ch in plan.prefill:
        ch.seq.prefilled += ch.length
    short.output_ids.append(7)  # its first token came from the prefill logits
    sizes = []
    while not long_.prefill_done:
        plan = s.schedule()
        assert plan.decode == [short]  # the running decode is never stalled
        assert sum(ch.length for ch in plan.prefill) <= 10
        sizes += [ch.length for ch in plan.prefill]
        for ch in plan.prefill:
            ch.seq.prefilled += ch.length
    assert sizes == [10, 9] and plan.prefill[-1].completes_prompt


def test_cancel_retires_waiting_and_running_in_the_next_schedule() -> None:
    s = Scheduler(slots=1, prefill_token_budget=8)
    a, b = seq("a", 2), seq("b", 2)
    s.add(a)
    s.add(b)
    s.schedule()
    assert s.cancel("a") and s.cancel("b") and not s.cancel("zzz")
    plan = s.schedule()
    assert set(plan.cancelled) == {a, b} and plan.empty
    assert s.num_active == 0 and s.num_waiting == 0 and not s.has_work


def test_decoding_sequences_are_packed_into_the_lowest_slots() -> None:
    s = Scheduler(slots=4, prefill_token_budget=2)
    seqs = [seq(r, 1 if r != "long" else 9) for r in ("a", "long", "b", "c")]
    for x in seqs:
        s.add(x)
    for ch in s.schedule().prefill:  # budget 2: a (1 token) and 1 token of long
        ch.seq.prefilled += ch.length
    a, long_, b, c = seqs
    a.output_ids.append(1)
    plan = s.schedule()
    assert plan.decode == [a] and a.slot == 0 and plan.swaps == []
    for ch in plan.prefill:
        ch.seq.prefilled += ch.length
    s.finish(a)  # slot 0 frees up; b and c (slots 2, 3) finish prefill later
    for x in (b, c):
        x.prefilled, x.output_ids = 1, [1]
    plan = s.schedule()
    assert [x.slot for x in plan.decode] == [0, 1] and set(plan.decode) == {b, c}
    assert long_.slot in (2, 3) and len(plan.swaps) == 2  # the prefilling sequence moved out of the way
    assert sorted([*s.running]) == sorted(x.slot for x in (b, c, long_)) and len(s._free) == 1
