"""The overlapped engine loop on the CUDA fast path: graph inputs straight from the device, and the
chained loop giving the same tokens as the plain one (CUDA only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_graph_runner_takes_device_ids_without_changing_the_step() -> None:
    """Ids on the device (the chained path) give bitwise the logits and states of ids from the host."""
    from tnllm.model.kernels.fastpath import FastTransnormer
    from tnllm.model.kernels.graphs import DecodeGraphRunner

    fast = FastTransnormer.random(
        d_model=64, n_layers=3, n_heads=4, d_ffn=96, vocab=99, device="cuda", dtype=torch.bfloat16, std=0.2
    )
    pool = fast.new_state_pool(8)
    for s in range(3):
        fast.prefill(torch.tensor([3 + s, 9, 11], device="cuda"), 0, pool, s)
    runner = DecodeGraphRunner(fast, pool, max_batch=8)
    runner.capture()
    start = [p.clone() for p in pool]
    ids, pos, slots = [4, 50, 7], [3, 3, 3], [0, 1, 2]
    host_steps, dev_steps = [], []
    for steps, on_dev in ((host_steps, False), (dev_steps, True)):
        for p, s0 in zip(pool, start, strict=True):
            p.copy_(s0)
        cur = torch.tensor(ids, device="cuda") if on_dev else torch.tensor(ids)
        for i in range(4):
            logits = runner.decode(cur, torch.tensor([q + i for q in pos]), torch.tensor(slots))
            steps.append(logits.clone())
            nxt = logits.argmax(-1)
            cur = nxt if on_dev else nxt.cpu()
    for a, b in zip(host_steps, dev_steps, strict=True):
        assert torch.equal(a, b)


def test_chained_engine_equals_plain_engine_on_the_fast_path(tiny_checkpoint: Path) -> None:
    from tnllm.engine import Engine, EngineRequest, SamplingParams
    from tnllm.engine.backend import FastBackend
    from tnllm.model import load_pretrained

    model = load_pretrained(tiny_checkpoint, device="cuda", dtype=torch.bfloat16)
    vocab = model.config.vocab_size
    results = {}
    for overlap in (False, True):
        backend = FastBackend(model)
        engine = Engine(model, None, slots=8, prefill_token_budget=64, overlap=overlap, backend=backend)
        assert engine.runner.prepare(max_batch=8)
        reqs = []
        for i in range(6):
            kw: dict = {"max_new_tokens": 24, "ignore_eos": True}
            if i % 2:
                kw.update(temperature=0.9, top_k=20, top_p=0.95, seed=i)
            prompt = [(7 * i + 3 * j) % vocab for j in range(5 + 11 * i)]
            reqs.append(EngineRequest(f"r{i}", prompt, SamplingParams(**kw)))
        results[overlap] = [r.token_ids for r in engine.generate(reqs)]
        assert (engine.chained_steps > 10) == overlap
        assert engine.stats().device_busy_seconds > 0  # CUDA-event step times are recorded
    assert results[True] == results[False]


def test_bf16_state_engine_tracks_the_fp32_state_engine(tiny_checkpoint: Path) -> None:
    """The opt-in bf16 state pool (TNLLM_STATE_DTYPE=bfloat16): same prompt, teacher-forced by the
    fp32 engine's greedy tokens, logits close to the fp32 state's (bf16 tolerance)."""
    from tnllm.engine import Engine
    from tnllm.engine.backend import FastBackend
    from tnllm.model import load_pretrained

    model = load_pretrained(tiny_checkpoint, device="cuda", dtype=torch.bfloat16)
    fast = FastBackend(model)  # one backend for both pools: graphs for the bf16 one, eager for fp32
    engines = {
        dt: Engine(model, None, slots=4, state_dtype=dt, backend=fast)
        for dt in (torch.float32, torch.bfloat16)
    }
    assert engines[torch.bfloat16].pool[0].dtype == torch.bfloat16
    assert engines[torch.bfloat16].runner.prepare(max_batch=4)
    ids = [(5 * j) % model.config.vocab_size for j in range(40)]
    logits = {}
    for dt, engine in engines.items():
        out = [fast.prefill(torch.tensor(ids[:30], device="cuda"), 0, engine.pool, 0)]
        for p in range(30, 40):
            tok = torch.tensor([ids[p]], device="cuda")
            # through the graph the logits are a view of a static buffer: copy before the next step
            out.append(fast.decode(tok, torch.tensor([p]), engine.pool, slice(0, 1))[0].clone())
        logits[dt] = torch.stack(out)
    a, b = logits[torch.float32], logits[torch.bfloat16]
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max())
