"""Token sampling: pure functions on logits, plus the batched entry point the engine calls.

Filters run batched over the rows that sample, each row with its own parameters; the random draw
uses each row's own ``torch.Generator`` (exponential race: ``argmax(p / E)``, ``E ~ Exp(1)``, which
picks token i with probability p_i), so a seeded request draws the same numbers whatever else
shares the batch. Every operation is row-wise, so a row's result never depends on the other rows.
Greedy rows take one batched argmax. The only host sync is the final ``tolist()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_TINY = 1e-30  # an Exp(1) draw of exactly 0 must not turn p / E into inf or nan


@dataclass
class RowSampling:
    """What the sampler needs to know about one row of a decode batch."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seen_ids: Sequence[int] = ()  # prompt + generated ids, for the repetition penalty
    generator: torch.Generator | None = None


def apply_repetition_penalty(logits: torch.Tensor, seen_ids: Sequence[int], penalty: float) -> torch.Tensor:
    """CTRL-style penalty on one row ``[V]``: seen tokens' positive logits / penalty, negative * penalty."""
    if penalty == 1.0 or not seen_ids:
        return logits
    ids = torch.tensor(sorted(set(seen_ids)), dtype=torch.long, device=logits.device)
    picked = logits.index_select(0, ids)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.index_copy(0, ids, picked)


def apply_top_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep each row's ``k[r]`` largest logits of ``[R, V]`` (ties at the k-th value kept); 0 keeps all."""
    v = logits.shape[-1]
    k = torch.where((k <= 0) | (k > v), v, k)
    top = torch.topk(logits, int(k.max()), dim=-1).values  # [R, kmax], descending
    kth = top.gather(-1, (k - 1).unsqueeze(-1))  # [R, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Nucleus filter of ``[R, V]``: keep each row's smallest top set whose probability reaches ``p[r]``."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # mass strictly before each token: kept while that is still below p, so the best token survives
    before = torch.cumsum(probs, dim=-1) - probs
    p = torch.where(p >= 1.0, float("inf"), p)  # 1 keeps everything, whatever the rounding of cumsum
    drop_sorted = before >= p.unsqueeze(-1)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row of ``probs [R, V]``, each row's noise from its own generator."""
    noise = torch.empty_like(probs)
    for r, gen in enumerate(generators):
        noise[r].exponential_(generator=gen)
    return torch.argmax(probs / noise.clamp_min_(_TINY), dim=-1)


def sample(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
    """Sample one id per row of ``logits [B, V]`` (greedy where temperature is 0)."""
    assert logits.shape[0] == len(rows)
    if all(r.temperature <= 0 and r.repetition_penalty == 1.0 for r in rows):
        return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]  # all greedy: one argmax, one sync
    dev = logits.device
    logits = logits.float()
    penalised = [i for i, r in enumerate(rows) if r.repetition_penalty != 1.0 and r.seen_ids]
    if penalised:
        logits = logits.clone()
        for i in penalised:
            logits[i] = apply_repetition_penalty(logits[i], rows[i].seen_ids, rows[i].repetition_penalty)
    out = torch.empty(len(rows), dtype=torch.long, device=dev)
    greedy = [i for i, r in enumerate(rows) if r.temperature <= 0]
    if greedy:
        idx = torch.tensor(greedy, device=dev)
        out[idx] = torch.argmax(logits.index_select(0, idx), dim=-1)
    drawn = [i for i, r in enumerate(rows) if r.temperature > 0]
    if drawn:
        idx = torch.tensor(drawn, device=dev)
        params = [rows[i] for i in drawn]
        temps = torch.tensor([r.temperature for r in params], device=dev).unsqueeze(-1)
        sub = logits.index_select(0, idx) / temps  # [R, V]
        if any(r.top_k > 0 for r in params):
            sub = apply_top_k(sub, torch.tensor([r.top_k for r in params], device=dev))
        if any(r.top_p < 1.0 for r in params):
            sub = apply_top_p(sub, torch.tensor([r.top_p for r in params], device=dev))
        out[idx] = _draw(torch.softmax(sub, dim=-1), [r.generator for r in params])
    return [int(t) for t in out.tolist()]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one request: seeded when asked, else from fresh OS entropy."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
