"""Token sampling: pure functions on logits, plus the batched entry point the engine calls.

Filters run batched over the rows that sample, each row with its own parameters; the random draw
is an exponential race (``argmax(p / E)``, ``E ~ Exp(1)``, which picks token i with probability
p_i) whose noise is COUNTER-BASED: the draw of token t of a request comes from a generator seeded
with ``draw_seed(seed, t)`` (``TokenDraws``), a pure function of (seed, t). So a seeded request
draws the same numbers whatever else shares the batch, and a request resumed at token t (after a
crash, or a preemption) continues with exactly the draws it would have made. Every operation is
row-wise, so a row's result never depends on the other rows.
Greedy rows take one batched argmax.

``BatchSampler`` prepares a batch's parameters on the device once; calling it returns the sampled ids
as a device tensor without any host sync, so the engine can feed them to the next decode step while
the host is still busy with this one. A batch with no repetition penalty can be reused for the same
rows step after step (the penalty's seen-token sets change every step).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tnllm.protocol.sampling import SamplingParams

_TINY = 1e-30  # an Exp(1) draw of exactly 0 must not turn p / E into inf or nan


@dataclass
class RowSampling:
    """One row of a decode batch: its request's parameters plus the row's sampling state."""

    params: SamplingParams = field(default_factory=SamplingParams)
    seen_ids: Sequence[int] = ()  # prompt + generated ids, for the repetition penalty
    generator: TokenDraws | None = None

    @property
    def temperature(self) -> float:
        return self.params.temperature

    @property
    def penalty(self) -> float:
        return self.params.repetition_penalty


def apply_repetition_penalty(logits: torch.Tensor, seen_ids: Sequence[int], penalty: float) -> torch.Tensor:
    """CTRL-style penalty on one row ``[V]``: seen tokens' positive logits / penalty, negative * penalty."""
    if penalty == 1.0 or not seen_ids:
        return logits
    ids = torch.tensor(sorted(set(seen_ids)), dtype=torch.long, device=logits.device)
    picked = logits.index_select(0, ids)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.index_copy(0, ids, picked)


def apply_top_k(logits: torch.Tensor, k: torch.Tensor, kmax: int | None = None) -> torch.Tensor:
    """Keep each row's ``k[r]`` largest logits of ``[R, V]`` (ties at the k-th value kept); 0 keeps all.

    ``kmax`` (the largest effective k, if the caller knows it on the host) spares a device sync."""
    v = logits.shape[-1]
    k = torch.where((k <= 0) | (k > v), v, k)
    if kmax is None:
        kmax = int(k.max())
    top = torch.topk(logits, min(kmax, v), dim=-1).values  # [R, kmax], descending
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


_MASK64 = (1 << 64) - 1


def draw_seed(seed: int, t: int) -> int:
    """The generator seed of token ``t`` of a request seeded ``seed`` (splitmix64 of both; 63 bits)."""
    z = (seed * 0x9E3779B97F4A7C15 + (t + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@dataclass
class TokenDraws:
    """A request's random draws: the noise of token ``t`` is a pure function of (``seed``, ``t``).

    ``t`` counts the draws made (the tokens sampled): resuming at token t means ``TokenDraws(seed, t)``.
    """

    seed: int
    t: int = 0

    def next(self, device: torch.device) -> torch.Generator:
        """The generator of the next token's draw (and count it)."""
        gen = torch.Generator(device=device)
        gen.manual_seed(draw_seed(self.seed, self.t))
        self.t += 1
        return gen


def _draw(probs: torch.Tensor, draws: Sequence[TokenDraws | None]) -> torch.Tensor:
    """One token per row of ``probs [R, V]``, each row's noise from its own counter-based draw."""
    noise = torch.empty_like(probs)
    for r, d in enumerate(draws):
        gen = d.next(probs.device) if d is not None else None
        noise[r].exponential_(generator=gen)
    return torch.argmax(probs / noise.clamp_min_(_TINY), dim=-1)


class BatchSampler:
    """One decode batch's sampling parameters, staged on the device; ``__call__`` never syncs."""

    def __init__(self, rows: Sequence[RowSampling], device: torch.device | str) -> None:
        dev = torch.device(device)
        self.rows = list(rows)
        self.all_greedy = all(r.temperature <= 0 and r.penalty == 1.0 for r in rows)
        self.penalised = [i for i, r in enumerate(rows) if r.penalty != 1.0 and r.seen_ids]
        #: the same object may sample the next step of the same rows (nothing here changes per step)
        self.reusable = not self.penalised
        greedy = [i for i, r in enumerate(rows) if r.temperature <= 0]
        drawn = [i for i, r in enumerate(rows) if r.temperature > 0]
        self._greedy = torch.tensor(greedy, dtype=torch.long, device=dev) if greedy else None
        self._drawn = torch.tensor(drawn, dtype=torch.long, device=dev) if drawn else None
        self._generators = [rows[i].generator for i in drawn]
        params = [rows[i].params for i in drawn]
        self._temps = (
            torch.tensor([p.temperature for p in params], device=dev).unsqueeze(-1) if drawn else None
        )
        self._top_k = None
        self._kmax = 0
        if any(p.top_k > 0 for p in params):
            self._top_k = torch.tensor([p.top_k for p in params], dtype=torch.long, device=dev)
            # rows without a top-k keep everything: their effective k is the vocabulary size
            self._kmax = max(p.top_k if p.top_k > 0 else 1 << 62 for p in params)
        self._top_p = None
        if any(p.top_p < 1.0 for p in params):
            self._top_p = torch.tensor([p.top_p for p in params], device=dev)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample one id per row of ``logits [B, V]``; a ``[B]`` long tensor on the logits' device."""
        assert logits.shape[0] == len(self.rows)
        if self.all_greedy:
            return torch.argmax(logits, dim=-1)
        logits = logits.float()
        if self.penalised:
            logits = logits.clone()
            for i in self.penalised:
                r = self.rows[i]
                logits[i] = apply_repetition_penalty(logits[i], r.seen_ids, r.penalty)
        out = torch.empty(len(self.rows), dtype=torch.long, device=logits.device)
        if self._greedy is not None:
            out[self._greedy] = torch.argmax(logits.index_select(0, self._greedy), dim=-1)
        if self._drawn is not None:
            assert self._temps is not None
            sub = logits.index_select(0, self._drawn) / self._temps  # [R, V]
            if self._top_k is not None:
                sub = apply_top_k(sub, self._top_k, self._kmax)
            if self._top_p is not None:
                sub = apply_top_p(sub, self._top_p)
            out[self._drawn] = _draw(torch.softmax(sub, dim=-1), self._generators)
        return out


def sample(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
    """Sample one id per row of ``logits [B, V]`` (greedy where temperature is 0); one host sync."""
    return [int(t) for t in BatchSampler(rows, logits.device)(logits).tolist()]


def make_generator(seed: int | None, start: int = 0) -> TokenDraws:
    """The draws of one request from token ``start`` on: seeded when asked, else a fresh random seed."""
    return TokenDraws(secrets.randbits(63) if seed is None else seed, start)
