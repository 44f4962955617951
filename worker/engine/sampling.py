"""Token sampling: pure functions on logits, plus the batched entry point the engine calls.

Every random draw of a row uses that row's own ``torch.Generator``, so a seeded request draws the
same numbers whatever else shares the batch. Rows that do not sample (greedy) take one batched argmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by a positive temperature (1.0 leaves them unchanged)."""
    assert temperature > 0, "greedy rows never reach apply_temperature"
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of a row ``[V]`` (ties at the k-th value kept); 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter of a row ``[V]``: keep the smallest top set whose probability reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # mass strictly before each token: a token is kept while the mass before it is still below p,
    # so the most likely token always survives.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_row(logits: torch.Tensor, row: RowSampling) -> int:
    """Sample one token id from a row ``[V]`` (greedy when temperature is 0)."""
    logits = apply_repetition_penalty(logits.float(), row.seen_ids, row.repetition_penalty)
    if row.temperature <= 0:
        return int(torch.argmax(logits).item())
    logits = apply_temperature(logits, row.temperature)
    logits = apply_top_k(logits, row.top_k)
    logits = apply_top_p(logits, row.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=row.generator).item())


def sample(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
    """Sample one id per row of ``logits [B, V]``; greedy rows without a penalty share one argmax."""
    assert logits.shape[0] == len(rows)
    plain = [i for i, r in enumerate(rows) if r.temperature <= 0 and r.repetition_penalty == 1.0]
    if len(plain) == len(rows):  # all greedy: one argmax, one host sync, no gather
        return [int(t) for t in torch.argmax(logits, dim=-1).tolist()]
    out = [0] * len(rows)
    if plain:
        idx = torch.tensor(plain, dtype=torch.long, device=logits.device)
        for i, tok in zip(plain, torch.argmax(logits.index_select(0, idx), dim=-1).tolist(), strict=True):
            out[i] = tok
    plain_set = set(plain)
    for i, r in enumerate(rows):
        if i not in plain_set:
            out[i] = sample_row(logits[i], r)
    return out


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one request: seeded when asked, else from fresh OS entropy."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
