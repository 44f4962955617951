"""Request lifecycle: refusals, EOS, stop strings, streaming text, cancellation, the background loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.engine.conftest import greedy, prompts
from tnllm.engine import EngineRequest, SamplingParams, TokenEvent
from tnllm.errors import RequestRejected
from tnllm.text.stop import TextStream


def test_refusals_happen_before_a_slot_is_taken(make_engine: Any) -> None:
    engine = make_engine(slots=2, max_context=50)
    with pytest.raises(RequestRejected, match="context limit of 50"):
        engine.submit(greedy(list(range(3, 43)), 11))
    with pytest.raises(RequestRejected, match="empty"):
        engine.submit(greedy([], 5))
    with pytest.raises(RequestRejected, match="vocabulary"):
        engine.submit(greedy([10**7], 5))
    with pytest.raises(RequestRejected, match=r"^top_p: Input should be greater than 0$"):
        engine.submit(EngineRequest.from_json("x", [5], {"max_new_tokens": 4, "top_p": 0.0}))
    with pytest.raises(RequestRejected, match=r"^max_new_tokens: must be resolved"):
        engine.submit(EngineRequest("x", [5], SamplingParams()))
    assert engine.generate([greedy(list(range(3, 43)), 10)])[0].completion_tokens == 10  # exactly 50 fits
    s = engine.stats()
    assert (s.active, s.waiting) == (0, 0)


def test_eos_stops_unless_ignored(make_engine: Any, engine_model: Any) -> None:
    """Hot (the hottest allowed) seeded draws hit EOS somewhere; the same seeds without ignore_eos
    stop right there."""
    eos = int(engine_model.config.eos_token_id)

    def draws(ignore_eos: bool) -> list[Any]:
        params = dict(max_new_tokens=64, temperature=5.0, ignore_eos=ignore_eos)
        reqs = [EngineRequest(f"e{i}", [5, i + 3], SamplingParams(seed=i, **params)) for i in range(128)]  # type: ignore[arg-type]
        return make_engine(slots=128, budget=4096).generate(reqs)

    ignored = draws(ignore_eos=True)
    hits = [i for i, r in enumerate(ignored) if eos in r.token_ids[:-1]]
    assert hits, "no draw produced EOS"
    assert all(r.finish_reason == "length" and len(r.token_ids) == 64 for r in ignored)
    stopped = draws(ignore_eos=False)
    for i in hits:
        cut = ignored[i].token_ids.index(eos) + 1
        assert stopped[i].token_ids == ignored[i].token_ids[:cut] and stopped[i].finish_reason == "stop"
        assert eos not in stopped[i].token_ids[:-1]


def collect(engine: Any, req: EngineRequest) -> tuple[Any, list[TokenEvent]]:
    events: list[TokenEvent] = []
    handle = engine.submit(req, on_token=events.append)
    while not handle.done():
        engine.step()
    return handle.result(0), events


def test_stop_string_across_a_token_boundary_is_never_emitted(
    make_engine: Any, engine_tokenizer: Any
) -> None:
    engine = make_engine()
    prompt = engine_tokenizer.encode("The quick brown fox")
    params = dict(max_new_tokens=40, temperature=1.0, seed=77, ignore_eos=True)
    full, events = collect(engine, EngineRequest("full", prompt, SamplingParams(**params)))  # type: ignore[arg-type]
    assert "".join(e.text for e in events) == full.text
    # a stop string made of the tail of the text so far and the head of the next delta, first seen there
    for cut in range(1, len(events)):
        before = "".join(e.text for e in events[:cut])
        stop = before[-2:] + events[cut].text[:2]
        if len(before) >= 2 and events[cut].text and full.text.index(stop) == len(before) - 2:
            break
    else:
        raise AssertionError(f"no usable token boundary in {[e.text for e in events]}")
    req = EngineRequest("stopped", prompt, SamplingParams(stop=(stop, "never-in-text"), **params))  # type: ignore[arg-type]
    res, evs = collect(engine, req)
    want = before[:-2]
    assert res.finish_reason == "stop" and res.text == want
    streamed = ""
    for e in evs:
        streamed += e.text
        assert want.startswith(streamed)  # no part of the stop string ever went out
    assert streamed == want and len(res.token_ids) == cut + 1  # stopped at the token completing it


@pytest.mark.parametrize("text", ["你好", "你好，世界！😀 emoji 👍🏽 and ascii"])
def test_streaming_text_of_chinese_and_emoji(engine_tokenizer: Any, text: str) -> None:
    ids = engine_tokenizer.encode(text)
    stream = TextStream(engine_tokenizer, ())
    deltas = [stream.push([i]) for i in ids] + [stream.finish()]
    assert "".join(deltas) == engine_tokenizer.decode(ids) and text in "".join(deltas)
    assert not any("\ufffd" in d for d in deltas)
    assert len(ids) > len([d for d in deltas if d])  # some bytes were held back until complete


def test_sampled_streams_concatenate_to_the_final_text(make_engine: Any, engine_tokenizer: Any) -> None:
    engine = make_engine(slots=16)
    got: dict[str, list[str]] = {}
    handles = []
    for i, p in enumerate(["你好", "😀", "hello", "世界和平"] * 4):
        req = EngineRequest(
            f"u{i}", engine_tokenizer.encode(p), SamplingParams(max_new_tokens=30, temperature=1.5, seed=i)
        )
        got[req.request_id] = []
        handles.append(engine.submit(req, on_token=lambda e: got[e.request_id].append(e.text)))
    while not all(h.done() for h in handles):
        engine.step()
    for h in handles:
        res = h.result(0)
        assert "".join(got[h.request_id]) == res.text
        if res.finish_reason == "length":  # nothing cut: the stream is exactly the decoded ids
            assert res.text == engine_tokenizer.decode(res.token_ids)


def test_cancel_frees_the_slot_within_one_step(make_engine: Any) -> None:
    engine = make_engine(slots=2)
    a, b, c = (engine.submit(greedy([5, 6, 7], 1000, rid=r)) for r in "abc")
    for _ in range(3):
        engine.step()
    assert (engine.stats().active, engine.stats().waiting) == (2, 1)
    engine.cancel("a")
    engine.cancel("c")  # still waiting
    engine.step()
    ra, rc = a.result(0), c.result(0)
    assert ra.finish_reason == rc.finish_reason == "cancelled"
    assert len(ra.token_ids) == 3 and rc.token_ids == []
    assert (engine.stats().active, engine.stats().waiting) == (1, 0)
    b.cancel()
    engine.step()
    assert b.result(0).finish_reason == "cancelled" and engine.stats().active == 0


def test_background_loop_streams_and_cancels(make_engine: Any, engine_model: Any) -> None:
    engine = make_engine(slots=4)
    engine.start()
    try:
        ps = prompts(6, engine_model.config.vocab_size, seed=11, max_len=10)
        results = engine.generate([greedy(p, 8, rid=f"b{i}") for i, p in enumerate(ps)], timeout=60)
        assert [len(r.token_ids) for r in results] == [8] * 6
        first = threading.Event()
        handle = engine.submit(greedy([9, 9, 9], 4000, rid="long"), on_token=lambda e: first.set())
        assert first.wait(30)
        handle.cancel()
        res = handle.result(timeout=30)
        assert res.finish_reason == "cancelled" and 0 < len(res.token_ids) < 4000
        assert engine.stats().steps > 8
    finally:
        engine.stop()
