"""Token sampling: pure functions on logits, plus the batched entry point the engine calls.

Processing order (vLLM's): grammar mask → ``logit_bias`` → penalties (repetition, presence,
frequency) → greedy argmax, or temperature → top-k → top-p → a random draw. Logprobs are of the
raw logits, before all of it (``tnllm.protocol.outputs``). Every operation is row-wise, so a row's
result never depends on the other rows.

The random draw is counter-based: the noise of choice ``i`` of a request with seed ``s`` at its
generated token ``t`` is a pure function of ``(s, i, t)`` and the token id (``counter_uniforms``),
an integer hash computed for all rows at once on the device, with no generator state. So a seeded
request draws the same tokens whatever shares the batch, and a run resumed at token ``t`` (on
another worker) continues exactly as the first one would have. Unseeded requests get a random seed
when they start and take the same path. The draw is an exponential race, ``argmax(p / E)`` with
``E = -log U ~ Exp(1)``, which picks token ``v`` with probability ``p_v``.

``BatchSampler`` prepares a batch's parameters on the device once; calling it returns the sampled
ids (and the logprob payload) as device tensors without any host sync, so the engine can feed the
ids to the next decode step while the host is still busy with this one. The same sampler may run
the next step of the same rows (``reusable``) unless a row has a repetition penalty or a grammar
(both need this step's token on the host): its draw counters and the presence/frequency counts
(a device pool, one row per slot) advance on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tnllm.protocol.sampling import SamplingParams

_TINY = 1e-30  # an Exp(1) draw of exactly 0 must not turn p / E into inf or nan
_M32 = 0xFFFFFFFF
_M64 = (1 << 64) - 1
_MUL = 0x45D9F3B  # < 2**31: a 32-bit value times it fits an int64, no overflow


@dataclass
class RowSampling:
    """One row of a decode batch: its request's parameters plus the row's sampling state."""

    params: SamplingParams = field(default_factory=SamplingParams)
    seen_ids: Sequence[int] = ()  # prompt + generated ids, for the repetition penalty
    seed: int = 0  # the request's seed (a random one when it gave none)
    choice: int = 0  # which of the request's n choices this row generates
    step: int = 0  # tokens this choice generated before this draw
    slot: int = -1  # its row of the count pool (presence/frequency penalties)

    @property
    def temperature(self) -> float:
        return self.params.temperature

    @property
    def penalty(self) -> float:
        return self.params.repetition_penalty

    @property
    def counts_tokens(self) -> bool:
        """The row needs counts of its generated tokens (presence or frequency penalty)."""
        return self.params.presence_penalty != 0.0 or self.params.frequency_penalty != 0.0


# --- counter-based noise --------------------------------------------------------------------------
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def row_key(seed: int, choice: int) -> tuple[int, int]:
    """Two 32-bit key words of choice ``choice`` of a request seeded ``seed`` (host ints)."""
    k = _splitmix64(_splitmix64(seed & _M64) ^ (choice & _M64))
    return k & _M32, k >> 32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (bijective) of int64 tensors holding values < 2**32."""
    x = (((x >> 16) ^ x) * _MUL) & _M32
    x = (((x >> 16) ^ x) * _MUL) & _M32
    return (x >> 16) ^ x


def counter_uniforms(keys: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1), ``[R, vocab]`` float32: row r's are a pure function of its key words
    ``keys[r]`` (``row_key``), its step ``steps[r]`` and the token id; on ``keys``' device."""
    a, b = keys[:, 0:1], keys[:, 1:2]
    s1 = _mix32(_mix32((steps.unsqueeze(-1) & _M32) ^ a) ^ b)  # [R, 1]
    s2 = _mix32(s1 ^ b)
    v = torch.arange(vocab, dtype=torch.long, device=keys.device)
    h = _mix32((_mix32(v ^ s1) + s2) & _M32)  # [R, V]
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


def uniforms_for(
    seed: int, choice: int, step: int, vocab: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[vocab]`` uniforms of one draw: choice ``choice`` of seed ``seed`` at generated token ``step``."""
    keys = torch.tensor([row_key(seed, choice)], dtype=torch.long, device=device)
    return counter_uniforms(keys, torch.tensor([step], dtype=torch.long, device=device), vocab)[0]


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The exponential race: one token per row of ``probs [R, V]`` from its ``uniforms [R, V]``."""
    noise = (-torch.log(uniforms)).clamp_min_(_TINY)
    return torch.argmax(probs / noise, dim=-1)


# --- logit processors -----------------------------------------------------------------------------
def apply_repetition_penalty(logits: torch.Tensor, seen_ids: Sequence[int], penalty: float) -> torch.Tensor:
    """CTRL-style penalty on one row ``[V]``: seen tokens' positive logits / penalty, negative * penalty."""
    if penalty == 1.0 or not seen_ids:
        return logits
    ids = torch.tensor(sorted(set(seen_ids)), dtype=torch.long, device=logits.device)
    picked = logits.index_select(0, ids)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.index_copy(0, ids, picked)


def apply_count_penalties(
    logits: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor, frequency: torch.Tensor
) -> torch.Tensor:
    """OpenAI's presence/frequency penalties on ``[R, V]``: ``logit - frequency * count - presence *
    (count > 0)``, ``counts`` the row's generated tokens so far, the penalties ``[R, 1]``."""
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def apply_bitmask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Tokens whose bit is 0 in ``mask [R, ceil(V/32)]`` (int32, llguidance's layout) get -inf;
    tokens past the mask's width too."""
    bits = torch.arange(32, dtype=torch.int32, device=mask.device)
    allowed = ((mask.unsqueeze(-1) >> bits) & 1).flatten(1).bool()  # [R, 32 W]
    v = logits.shape[-1]
    if allowed.shape[1] < v:
        pad = torch.zeros(allowed.shape[0], v - allowed.shape[1], dtype=torch.bool, device=mask.device)
        allowed = torch.cat([allowed, pad], dim=1)
    return logits.masked_fill(~allowed[:, :v], float("-inf"))


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


def logprob_payload(raw: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, 2 + 2k]`` float64: column 0 the sampled ids of every row; for ``rows`` also the
    chosen token's logprob, then the ``k`` best logprobs and their ids (``log_softmax`` of ``raw``).
    Ids are exact in float64, so one host copy carries the step's whole answer."""
    out = torch.zeros(raw.shape[0], 2 + 2 * k, dtype=torch.float64, device=raw.device)
    out[:, 0] = tokens
    lp = torch.log_softmax(raw.index_select(0, rows).float(), dim=-1)
    picked = tokens.index_select(0, rows)
    sub = torch.empty(rows.shape[0], 2 + 2 * k, dtype=torch.float64, device=raw.device)
    sub[:, 0] = picked
    sub[:, 1] = lp.gather(1, picked.unsqueeze(-1)).squeeze(-1)
    if k:
        top = torch.topk(lp, k, dim=-1)
        sub[:, 2 : 2 + k] = top.values
        sub[:, 2 + k :] = top.indices
    return out.index_copy_(0, rows, sub)


class BatchSampler:
    """One decode batch's sampling parameters, staged on the device; ``__call__`` never syncs.

    ``counts`` is the engine's ``[slots, V]`` count pool (needed when a row has a presence or
    frequency penalty); ``mask`` the grammar bitmask ``[len(mask_rows), W]`` of this step's rows
    ``mask_rows``."""

    def __init__(
        self,
        rows: Sequence[RowSampling],
        device: torch.device | str,
        *,
        counts: torch.Tensor | None = None,
        mask_rows: Sequence[int] = (),
        mask: torch.Tensor | None = None,
    ) -> None:
        dev = self.device = torch.device(device)
        self.rows = list(rows)
        self.penalised = [i for i, r in enumerate(rows) if r.penalty != 1.0 and r.seen_ids]
        self._mask = None if mask is None else mask.to(dev, non_blocking=True)
        self._mask_rows = _index(mask_rows, dev)
        #: the same object may sample the next step of the same rows
        self.reusable = not self.penalised and self._mask is None
        self._counted = _index([i for i, r in enumerate(rows) if r.counts_tokens], dev)
        self._stage_penalties(counts)
        biased = [i for i, r in enumerate(rows) if r.params.logit_bias]
        self._biased = _index(biased, dev)
        self._bias_rows = [rows[i].params.logit_bias for i in biased]
        self._bias: torch.Tensor | None = None  # dense [len(biased), V], built on the first call
        with_lp = [i for i, r in enumerate(rows) if r.params.logprobs]
        self._lp_rows = _index(with_lp, dev)
        self._lp_k = max((rows[i].params.top_logprobs for i in with_lp), default=0)
        self.all_greedy = (
            all(r.temperature <= 0 for r in rows)
            and not self.penalised
            and self._mask is None
            and self._counted is None
            and self._biased is None
            and self._lp_rows is None
        )
        self._greedy = _index([i for i, r in enumerate(rows) if r.temperature <= 0], dev)
        self._stage_draws([i for i, r in enumerate(rows) if r.temperature > 0])

    def _stage_penalties(self, counts: torch.Tensor | None) -> None:
        self._counts = counts
        if self._counted is None:
            return
        if counts is None:
            raise ValueError("presence/frequency penalties need the engine's count pool")
        rows = [self.rows[i] for i in self._counted.tolist()]
        self._count_slots = torch.tensor([r.slot for r in rows], dtype=torch.long, device=self.device)
        self._presence = torch.tensor([[r.params.presence_penalty] for r in rows], device=self.device)
        self._frequency = torch.tensor([[r.params.frequency_penalty] for r in rows], device=self.device)

    def _stage_draws(self, drawn: list[int]) -> None:
        dev = self.device
        self._drawn = _index(drawn, dev)
        rows = [self.rows[i] for i in drawn]
        params = [r.params for r in rows]
        self._temps = (
            torch.tensor([p.temperature for p in params], device=dev).unsqueeze(-1) if drawn else None
        )
        self._keys = torch.tensor([row_key(r.seed, r.choice) for r in rows], dtype=torch.long, device=dev)
        self._steps = torch.tensor([r.step for r in rows], dtype=torch.long, device=dev)
        self._top_k = None
        self._kmax = 0
        if any(p.top_k > 0 for p in params):
            self._top_k = torch.tensor([p.top_k for p in params], dtype=torch.long, device=dev)
            # rows without a top-k keep everything: their effective k is the vocabulary size
            self._kmax = max(p.top_k if p.top_k > 0 else 1 << 62 for p in params)
        self._top_p = None
        if any(p.top_p < 1.0 for p in params):
            self._top_p = torch.tensor([p.top_p for p in params], device=dev)

    def __call__(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample one id per row of ``logits [B, V]``: the ``[B]`` long ids on the logits' device,
        and the ``logprob_payload`` when a row asked for logprobs (else None)."""
        assert logits.shape[0] == len(self.rows)
        if self.all_greedy:
            return torch.argmax(logits, dim=-1), None
        x = self._processed(logits)
        out = torch.empty(len(self.rows), dtype=torch.long, device=logits.device)
        if self._greedy is not None:
            out[self._greedy] = torch.argmax(x.index_select(0, self._greedy), dim=-1)
        if self._drawn is not None:
            out[self._drawn] = self._draw(x.index_select(0, self._drawn))
        if self._counted is not None:
            assert self._counts is not None
            picked = out.index_select(0, self._counted)
            one = torch.ones(picked.shape, dtype=self._counts.dtype, device=picked.device)
            self._counts.index_put_((self._count_slots, picked), one, accumulate=True)
        payload = None
        if self._lp_rows is not None:
            payload = logprob_payload(logits, self._lp_rows, out, self._lp_k)
        return out, payload

    def _processed(self, logits: torch.Tensor) -> torch.Tensor:
        """Grammar mask, logit bias and penalties applied (a new tensor: ``logits`` stays raw)."""
        x = logits.to(torch.float32, copy=True)
        if self._mask is not None:
            assert self._mask_rows is not None
            x.index_copy_(0, self._mask_rows, apply_bitmask(x.index_select(0, self._mask_rows), self._mask))
        if self._biased is not None:
            if self._bias is None:
                self._bias = _dense_bias(self._bias_rows, x.shape[-1], x.device)
            x.index_add_(0, self._biased, self._bias)
        if self._counted is not None:
            assert self._counts is not None
            sub = x.index_select(0, self._counted)
            counts = self._counts.index_select(0, self._count_slots)
            x.index_copy_(
                0, self._counted, apply_count_penalties(sub, counts, self._presence, self._frequency)
            )
        for i in self.penalised:
            r = self.rows[i]
            x[i] = apply_repetition_penalty(x[i], r.seen_ids, r.penalty)
        return x

    def _draw(self, sub: torch.Tensor) -> torch.Tensor:
        assert self._temps is not None
        sub = sub / self._temps  # [R, V]
        if self._top_k is not None:
            sub = apply_top_k(sub, self._top_k, self._kmax)
        if self._top_p is not None:
            sub = apply_top_p(sub, self._top_p)
        ids = draw(torch.softmax(sub, dim=-1), counter_uniforms(self._keys, self._steps, sub.shape[-1]))
        self._steps += 1  # a reused sampler draws the rows' next tokens
        return ids


def _index(rows: Sequence[int], device: torch.device) -> torch.Tensor | None:
    return torch.tensor(list(rows), dtype=torch.long, device=device) if rows else None


def _dense_bias(biases: list[dict[int, float]], vocab: int, device: torch.device) -> torch.Tensor:
    """``[len(biases), vocab]`` with each row's ``logit_bias`` at its token ids (others 0)."""
    rows = [r for r, bias in enumerate(biases) for _ in bias]
    ids = [t for bias in biases for t in bias]
    values = [v for bias in biases for v in bias.values()]
    dense = torch.zeros(len(biases), vocab, device=device)
    dense[torch.tensor(rows, dtype=torch.long), torch.tensor(ids, dtype=torch.long)] = torch.tensor(values)
    return dense


def sample(
    logits: torch.Tensor, rows: Sequence[RowSampling], counts: torch.Tensor | None = None
) -> list[int]:
    """Sample one id per row of ``logits [B, V]`` (greedy where temperature is 0); one host sync."""
    ids, _ = BatchSampler(rows, logits.device, counts=counts)(logits)
    return [int(t) for t in ids.tolist()]
