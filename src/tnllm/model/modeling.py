"""TransNormerLLM modules (docs/MODEL_SPEC.md §4) with explicit per-sequence state and positions.

Parameter names equal the official checkpoint keys (``model.layers.{i}.token_mixer.qkvu_proj.weight``
...), so a state dict loads without renaming. There are no hidden position counters: every call is
given its positions and its state (the official per-module offset is the bug we avoid, §10 Q1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tnllm.model import formulas, seam
from tnllm.model import ops as ref_ops
from tnllm.model.config import TransnormerConfig


class SimpleRMSNorm(nn.Module):
    """``z / sqrt(mean(z²) + eps)`` in fp32, no gain (docs/MODEL_SPEC.md §4)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def _norm(config: TransnormerConfig, dim: int) -> nn.Module:
    # Any norm_type other than simplermsnorm is an affine LayerNorm in the official code.
    return SimpleRMSNorm() if config.uses_srms else nn.LayerNorm(dim, eps=1e-5)


class Lrpe(nn.Module):
    """Holds the checkpoint's θ ``[H, 1, D // H]``; the rotation itself is :func:`ops.lrpe`."""

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.empty(num_heads, 1, head_dim), requires_grad=False)


class GLU(nn.Module):
    """SGLU channel mixer: ``l3(l1(a) ⊙ l2(a))``, no activation."""

    def __init__(self, dim: int, ffn_dim: int, bias: bool) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim, ffn_dim, bias=bias)
        self.l2 = nn.Linear(dim, ffn_dim, bias=bias)
        self.l3 = nn.Linear(ffn_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.l3(self.l1(x) * self.l2(x))


class NormLinearAttention(nn.Module):
    """Token mixer: qkvu projection, act, LRPE, decayed linear attention, norm, gate, out_proj."""

    def __init__(self, config: TransnormerConfig, use_lrpe: bool) -> None:
        super().__init__()
        e, d_model = config.hidden_dim, config.decoder_embed_dim
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkvu_proj = nn.Linear(d_model, 4 * e, bias=config.bias)
        self.out_proj = nn.Linear(e, d_model, bias=config.bias)
        self.norm = _norm(config, e)
        self.act: Callable[[Tensor], Tensor] = ref_ops.activation(config.linear_act_fun)
        self.lrpe = Lrpe(self.num_heads, d_model // self.num_heads) if use_lrpe else None

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        state: Tensor,
        decay: Tensor,
        ops: seam.AttentionOps,
        step: bool,
        inplace: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """x ``[N, T, D]``, positions ``[N, T]``, state ``[N, H, dk, d]`` -> (``[N, T, D]``, new state).

        ``inplace`` (decode steps only): the new state is written into ``state`` and returned.
        """
        n, t, _ = x.shape
        q, k, v, u = self.qkvu_proj(x).chunk(4, dim=-1)  # 4 x [N, T, E]
        q, k, v = (
            z.reshape(n, t, self.num_heads, self.head_dim).transpose(1, 2) for z in (q, k, v)
        )  # [N, H, T, d]
        q, k = self.act(q), self.act(k)
        if self.lrpe is not None:
            q = ref_ops.lrpe(q, self.lrpe.theta, positions)  # [N, H, T, 2d]
            k = ref_ops.lrpe(k, self.lrpe.theta, positions)
        if step and inplace:
            o = seam.decode_step_inplace(ops, q[:, :, 0], k[:, :, 0], v[:, :, 0], decay, state)
            new_state = state
            o = o.unsqueeze(2)  # [N, H, 1, d]
        elif step:
            o, new_state = ops.decode_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], decay, state)
            o = o.unsqueeze(2)  # [N, H, 1, d]
        else:
            o, new_state = ops.prefill_attention(q, k, v, decay, state)
        o = o.to(x.dtype).transpose(1, 2).reshape(n, t, -1)  # [N, T, E], head-major
        return self.out_proj(u * self.norm(o)), new_state


class DecoderLayer(nn.Module):
    def __init__(self, config: TransnormerConfig, use_lrpe: bool) -> None:
        super().__init__()
        self.token_norm = _norm(config, config.decoder_embed_dim)
        self.token_mixer = NormLinearAttention(config, use_lrpe)
        self.channel_norm = _norm(config, config.decoder_embed_dim)
        self.channel_mixer = GLU(config.decoder_embed_dim, config.ffn_dim, config.bias)


class Backbone(nn.Module):
    """Everything under the official ``model.`` prefix."""

    def __init__(self, config: TransnormerConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.decoder_embed_dim)
        lrpe = config.lrpe_layers or (False,) * config.num_layers
        self.layers = nn.ModuleList(DecoderLayer(config, lrpe[i]) for i in range(config.num_layers))
        self.final_norm = _norm(config, config.decoder_embed_dim)


class TransnormerLM(nn.Module):
    """TransNormerLLM causal LM with a per-sequence recurrent state pool (docs/INTERNALS.md)."""

    def __init__(self, config: TransnormerConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        # Tied (the default, §3.3): the head IS the embedding matrix, no second parameter.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.decoder_embed_dim, config.vocab_size, bias=False)
        )
        # Derived constants, fp32, never part of the state dict nor touched by .to(dtype).
        with torch.device("cpu"):
            self._decay_cpu = torch.stack(
                [
                    formulas.layer_decay(config.num_heads, i, config.num_layers)
                    for i in range(config.num_layers)
                ]
            )  # [L, H]
        self._decay_by_device: dict[torch.device, Tensor] = {}

    # ---- sizes ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def state_shapes(self) -> list[tuple[int, int, int]]:
        """Per layer ``(H, dk_i, d)``; fixed size, independent of sequence length."""
        cfg = self.config
        return [
            formulas.state_shape(cfg.num_heads, cfg.head_dim, layer.token_mixer.lrpe is not None)
            for layer in self._layers()
        ]

    def state_bytes_per_sequence(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of one sequence's state in ``dtype`` (docs/MODEL_SPEC.md §7.2)."""
        return formulas.state_bytes(self.state_shapes(), dtype)

    def new_state_pool(
        self, slots: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> list[Tensor]:
        """Per layer zeros ``[slots, H, dk_i, d]`` (fp32 unless asked; bf16 only on the CUDA path)."""
        dev = torch.device(device) if device is not None else self.device
        return [torch.zeros((slots, *shape), dtype=dtype, device=dev) for shape in self.state_shapes()]

    @staticmethod
    def reset_slot(pool: list[Tensor], slot: int) -> None:
        """Zero one slot's state in every layer (a fresh sequence)."""
        for layer_state in pool:
            layer_state[slot].zero_()

    # ---- public computation -----------------------------------------------------------------
    @torch.no_grad()
    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, T, V]`` for B fresh sequences ``[B, T]`` at positions ``0 .. T-1``."""
        b, t = input_ids.shape
        if t == 0:
            raise ValueError("forward needs at least one token per sequence")
        states = [torch.zeros((b, *s), dtype=torch.float32, device=self.device) for s in self.state_shapes()]
        positions = torch.arange(t, device=self.device).expand(b, t)
        logits, _ = self.run(input_ids, positions, states, step=False, last_only=False)
        return logits

    @torch.no_grad()
    def prefill(
        self, input_ids: Tensor, start_pos: int, pool: list[Tensor], slot: int, last_only: bool = True
    ) -> Tensor:
        """Consume ``input_ids [T]`` at positions ``start_pos ..`` from slot's state; update it in place.

        Returns logits ``[V]`` of the last token (``[T, V]`` when ``last_only`` is false).
        """
        t = int(input_ids.shape[0])
        if t == 0:
            raise ValueError("prefill needs at least one token")
        states = [layer_state[slot : slot + 1] for layer_state in pool]
        positions = torch.arange(start_pos, start_pos + t, device=self.device).unsqueeze(0)  # [1, T]
        logits, new_states = self.run(
            input_ids.unsqueeze(0), positions, states, step=False, last_only=last_only
        )
        for layer_state, new in zip(pool, new_states, strict=True):
            layer_state[slot].copy_(new[0])
        return logits[0, -1] if last_only else logits[0]

    @torch.no_grad()
    def prefill_many(self, chunks: list[tuple[list[int], int, int]], pool: list[Tensor]) -> Tensor:
        """Several prompt chunks ``(ids, start_pos, slot)`` (distinct slots) -> fp32 logits ``[N, V]``
        of each chunk's last token, every slot's state updated in place, one chunk after the other
        (the engine's fast backend packs them into one forward; same numbers either way)."""
        if not chunks:
            raise ValueError("prefill_many needs at least one chunk")
        rows = [
            self.prefill(torch.tensor(ids, dtype=torch.long, device=self.device), start, pool, slot).float()
            for ids, start, slot in chunks
        ]
        return torch.stack(rows)

    @torch.no_grad()
    def decode(
        self, input_ids: Tensor, positions: Tensor, pool: list[Tensor], slots: Tensor | slice
    ) -> Tensor:
        """One token for each of B sequences (``[B]`` ids, positions, slots) -> logits ``[B, V]``.

        ``slots`` may be a ``slice`` of B consecutive slots: their states are then updated in place
        through views of the pool (no gather/scatter copies), which is what the engine passes.
        """
        if isinstance(slots, slice):
            views = [layer_state[slots] for layer_state in pool]
            logits, _ = self.run(
                input_ids.unsqueeze(1),
                positions.to(self.device).unsqueeze(1),
                views,
                True,
                True,
                inplace=True,
            )
            return logits[:, 0]
        slots = slots.to(device=pool[0].device, dtype=torch.long)
        states = [layer_state.index_select(0, slots) for layer_state in pool]
        logits, new_states = self.run(
            input_ids.unsqueeze(1), positions.to(self.device).unsqueeze(1), states, step=True, last_only=True
        )
        for layer_state, new in zip(pool, new_states, strict=True):
            layer_state.index_copy_(0, slots, new.to(layer_state.device))
        return logits[:, 0]

    # ---- core -------------------------------------------------------------------------------
    def run(
        self,
        input_ids: Tensor,
        positions: Tensor,
        states: list[Tensor],
        step: bool,
        last_only: bool,
        inplace: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """ids ``[N, T]``, positions ``[N, T]``, per-layer states ``[N, H, dk, d]`` -> (logits, new states).

        ``step`` uses the recurrent form (T must be 1), else the block-wise prefill. Logits are
        ``[N, 1, V]`` when ``last_only``, else ``[N, T, V]``. ``states`` are not modified, unless
        ``inplace`` (decode steps only), which writes the new states into them.
        """
        input_ids = input_ids.to(self.device)
        ops = seam.ops_for(self.device)
        decay = self._decay()
        x = self.model.embed_tokens(input_ids) * self.config.embed_scale  # [N, T, D]
        new_states = []
        for i, layer in enumerate(self._layers()):
            mixed, new = layer.token_mixer(
                layer.token_norm(x), positions, states[i], decay[i], ops, step, inplace
            )
            x = x + mixed
            x = x + layer.channel_mixer(layer.channel_norm(x))
            new_states.append(new)
        if last_only:
            x = x[:, -1:]
        return self._head(self.model.final_norm(x)), new_states

    def _layers(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.model.layers))

    def _head(self, h: Tensor) -> Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def _decay(self) -> Tensor:
        dev = self.device
        if dev not in self._decay_by_device:
            self._decay_by_device[dev] = self._decay_cpu.to(dev)
        return self._decay_by_device[dev]
