"""The overlapped step loop (next decode launched from the device ids before the host work) gives
exactly the results of the plain loop: EOS and stop strings finishing mid-chain, cancels,
staggered arrivals, seeded sampling and repetition penalties mixed in one batch."""

from __future__ import annotations

from typing import Any

from tnllm.engine import Engine, EngineRequest, SamplingParams


def _engine(engine_model: Any, engine_tokenizer: Any, overlap: bool, slots: int = 6) -> Engine:
    return Engine(
        engine_model,
        engine_tokenizer,
        slots=slots,
        prefill_token_budget=24,
        max_context=4096,
        overlap=overlap,
    )


def _requests(eos_stop_text: str) -> list[EngineRequest]:
    prompts = [[5 + i, 17, 23 + 2 * i, 9][: 1 + i % 4] * (1 + i % 3) for i in range(10)]
    out = []
    for i, p in enumerate(prompts):
        kw: dict[str, Any] = {"max_new_tokens": 6 + 3 * i}
        if i % 3 == 1:
            kw.update(temperature=0.8, top_p=0.9, top_k=40, seed=500 + i)
        if i == 4:
            kw.update(repetition_penalty=1.3)
        if i in (2, 7):
            kw.update(stop=(eos_stop_text,))
        if i % 2 == 0:
            kw.update(ignore_eos=True)
        out.append(EngineRequest(f"r{i}", p, SamplingParams(**kw)))
    return out


def _run(engine: Engine, reqs: list[EngineRequest], cancel_at: int | None = None) -> dict[str, Any]:
    """Submit two at a time (staggered), step to the end; cancel r5 after ``cancel_at`` steps."""
    handles = {}
    pending = list(reqs)
    steps = 0
    while pending or not all(h.done() for h in handles.values()):
        for r in pending[:2]:
            handles[r.request_id] = engine.submit(r)
        pending = pending[2:]
        engine.step()
        steps += 1
        if cancel_at is not None and steps == cancel_at:
            engine.cancel("r5")
    return {rid: h.result(0) for rid, h in handles.items()}


def _eos_and_stop(engine_model: Any, engine_tokenizer: Any) -> tuple[int, str]:
    """A token the model really emits a few tokens in (as EOS), and the text of another (a stop string)."""
    eng = _engine(engine_model, engine_tokenizer, overlap=False)
    res = eng.generate([EngineRequest("probe", [5, 17], SamplingParams(max_new_tokens=12, ignore_eos=True))])[
        0
    ]
    eos = res.token_ids[4]
    stop_piece = engine_tokenizer.decode([res.token_ids[7]]).strip() or "e"
    return eos, stop_piece


def test_overlapped_loop_equals_the_plain_loop(engine_model: Any, engine_tokenizer: Any) -> None:
    eos, stop_text = _eos_and_stop(engine_model, engine_tokenizer)
    results = {}
    chained = {}
    for overlap in (False, True):
        eng = _engine(engine_model, engine_tokenizer, overlap)
        eng.eos_ids = frozenset({eos})
        results[overlap] = _run(eng, _requests(stop_text), cancel_at=9)
        chained[overlap] = eng.chained_steps
        assert eng.sched.num_active == 0 and eng._pending is None
        stats = eng.stats()  # what the tnllm_engine_overlapped_steps / busy_seconds counters show
        assert stats.overlapped_steps == eng.chained_steps
        assert 0 < stats.overlapped_steps < stats.steps or not overlap
        assert stats.busy_seconds > stats.device_wait_seconds >= 0
    assert chained[False] == 0
    assert chained[True] >= 5, "the overlapped path must actually chain steps"
    plain, fast = results[False], results[True]
    assert plain.keys() == fast.keys()
    for rid in plain:
        a, b = plain[rid], fast[rid]
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason), rid
    reasons = {r.finish_reason for r in plain.values()}
    assert {"stop", "length"} <= reasons, reasons  # EOS/stop really cut sequences short mid-run
    assert plain["r5"].finish_reason == "cancelled"


def test_a_sequence_finishing_mid_chain_drops_its_speculative_token(
    engine_model: Any, engine_tokenizer: Any
) -> None:
    eos, _ = _eos_and_stop(engine_model, engine_tokenizer)
    eng = _engine(engine_model, engine_tokenizer, overlap=True, slots=2)
    eng.eos_ids = frozenset({eos})
    stopping = EngineRequest("stops", [5, 17], SamplingParams(max_new_tokens=12))
    running = EngineRequest("runs", [5, 17, 9], SamplingParams(max_new_tokens=20, ignore_eos=True))
    events: dict[str, list[Any]] = {"stops": [], "runs": []}
    handles = [eng.submit(r, on_token=events[r.request_id].append) for r in (stopping, running)]
    while not all(h.done() for h in handles):
        eng.step()
    got = {h.request_id: h.result(0) for h in handles}
    for rid, evs in events.items():  # nothing streamed past the end, not even the speculative token
        assert [i for ev in evs for i in ev.token_ids] == got[rid].token_ids, rid
        assert "".join(ev.text for ev in evs) == got[rid].text, rid
    assert got["stops"].finish_reason == "stop"
    assert got["stops"].token_ids[-1] == eos and eos not in got["stops"].token_ids[:-1]
    assert len(got["runs"].token_ids) == 20
    assert eng.chained_steps > 0
    # the slot of the finished sequence is reused cleanly: a new request equals a fresh engine's
    again = eng.generate(
        [EngineRequest("again", [5, 17, 9], SamplingParams(max_new_tokens=20, ignore_eos=True))]
    )
    assert again[0].token_ids == got["runs"].token_ids
