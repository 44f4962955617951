"""``FastTransnormer``: TransNormerLLM prefill and decode on CUDA from the model's weights.

Same semantics as the reference model (docs/MODEL_SPEC.md §4, §7.1): per-sequence positions and states in a
slot pool, chunked prefill from a carried state, decode rows independent of each other. What differs
is how it is computed:

- weights in the model's dtype (bf16 for serving), the residual stream in fp32, the recurrent state
  fp32 by default;
- the two channel-mixer up-projections run as one GEMM over a concatenated weight (``from_model``
  re-points the module's ``l1``/``l2`` parameters at views of it, so no memory is duplicated);
- per layer, decode is 4 GEMMs + 5 Triton kernels (embed/add+SRMS, fused attention step,
  SRMS+gate, GLU product), with SiLU, LRPE (fp32 angles) and the state update fused into one pass
  over the state (``attention.decode_attention``); prefill uses fla's ``chunk_simple_gla``.

Nothing here synchronises with the host, so a decode step can be captured in a CUDA graph
(``graphs.DecodeGraphRunner``).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tnllm.model.formulas import layer_decay, lrpe_theta_init, state_shape
from tnllm.model.kernels.attention import (
    PackedIndex,
    chunk_index_host,
    decode_attention,
    packed_path_matches,
    prefill_attention,
    prefill_attention_packed,
    prep_qkv,
)
from tnllm.model.kernels.fused import add_rms, embed_rms, glu_product, norm_gate

log = logging.getLogger(__name__)


def pack_int64(sections: list[list[int]], device: torch.device) -> list[torch.Tensor]:
    """``sections`` as int64 views of one buffer copied to ``device`` without waiting for it (pinned
    source, non-blocking). Each section starts 16-byte aligned (odd ones padded by one), so the
    Triton kernels reading them see one pointer alignment whatever the lengths: a new alignment
    would compile another kernel variant mid-step."""
    values: list[int] = []
    bounds = []
    for sec in sections:
        bounds.append((len(values), len(values) + len(sec)))
        values.extend(sec)
        if len(sec) % 2:
            values.append(0)
    host = torch.tensor(values, dtype=torch.int64).pin_memory()
    buf = host.to(device, non_blocking=True)  # the caching host allocator keeps ``host`` until copied
    return [buf[a:b] for a, b in bounds]


@dataclass(frozen=True)
class FastSpec:
    """Shapes and scalars the fast path needs (from the model config)."""

    d_model: int  # D
    d_attn: int  # E
    n_heads: int  # H
    d_ffn: int  # F
    vocab: int  # V
    embed_scale: float
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.d_attn // self.n_heads


@dataclass
class FastLayer:
    """One decoder layer's tensors on the GPU. Biases are None for the released models."""

    qkvu_w: torch.Tensor  # [4E, D]
    out_w: torch.Tensor  # [D, E]
    l12_w: torch.Tensor  # [2F, D]: l1 rows then l2 rows
    l3_w: torch.Tensor  # [D, F]
    decay: torch.Tensor  # fp32 exp(-λ) [H]
    g_gamma: torch.Tensor  # fp32 -λ [H] (fla's log-decay)
    theta: torch.Tensor | None  # fp32 [H, d] on LRPE layers
    qkvu_b: torch.Tensor | None = None
    out_b: torch.Tensor | None = None
    l12_b: torch.Tensor | None = None
    l3_b: torch.Tensor | None = None


class FastTransnormer:
    """Prefill/decode of one model on one CUDA device; state pools as in ``TransnormerLM``."""

    def __init__(
        self,
        spec: FastSpec,
        embed: torch.Tensor,
        layers: list[FastLayer],
        head: torch.Tensor | None = None,
        gemv_batch1: bool = True,
    ):
        self.spec = spec
        self.embed = embed  # [V, D]
        self.head = embed if head is None else head  # tied unless the checkpoint says otherwise
        self.layers = layers
        self.gemv_batch1 = gemv_batch1
        # Triton GEMM for 17..128 decode rows rather than cuBLAS (faster there: docs/PERFORMANCE.md)
        self.skinny_gemm = True
        # the GLU product as our own (PDL-launched) kernel rather than torch's elementwise multiply
        self.glu_kernel = True
        self._packed_nosync: bool | None = None  # decided on first use (``packed_nosync``)

    @staticmethod
    def supports(model) -> bool:  # type: ignore[no-untyped-def]
        """Whether ``model`` (a ``TransnormerLM``) fits the fast path: CUDA weights, SRMS norms, SiLU."""
        cfg = model.config
        return (
            model.device.type == "cuda"
            and cfg.uses_srms
            and cfg.linear_act_fun in ("silu", "swish")
            and model.dtype in (torch.float32, torch.bfloat16, torch.float16)
        )

    @classmethod
    def from_model(cls, model) -> FastTransnormer:  # type: ignore[no-untyped-def]
        """Build from a ``TransnormerLM`` on CUDA, taking its weights over.

        Each layer's l1/l2 weights are concatenated once and the module's two parameters re-pointed
        at views of the result: the module's values (and its reference methods' numbers) stay the
        same and no weight is stored twice. The engine's ``FastBackend`` is the one caller.
        """
        cfg = model.config
        layers = []
        for i, layer in enumerate(model.model.layers):
            tm, cm = layer.token_mixer, layer.channel_mixer
            biases = (
                tuple(m.bias for m in (tm.qkvu_proj, tm.out_proj, cm.l1, cm.l2, cm.l3))
                if cfg.bias
                else (None,) * 5
            )
            fl, l12 = cls.make_layer(
                tm.qkvu_proj.weight.data,
                tm.out_proj.weight.data,
                cm.l1.weight.data,
                cm.l2.weight.data,
                cm.l3.weight.data,
                layer_decay(cfg.num_heads, i, cfg.num_layers),
                tm.lrpe.theta.data if tm.lrpe is not None else None,
                biases,
            )
            f = cfg.ffn_dim
            cm.l1.weight.data = l12[:f]
            cm.l2.weight.data = l12[f:]
            layers.append(fl)
        spec = FastSpec(
            cfg.decoder_embed_dim, cfg.hidden_dim, cfg.num_heads, cfg.ffn_dim, cfg.vocab_size, cfg.embed_scale
        )
        head = model.lm_head.weight.data if model.lm_head is not None else None
        return cls(spec, model.model.embed_tokens.weight.data, layers, head=head)

    # -- construction -----------------------------------------------------------------------------
    @staticmethod
    def make_layer(
        qkvu_w: torch.Tensor,
        out_w: torch.Tensor,
        l1_w: torch.Tensor,
        l2_w: torch.Tensor,
        l3_w: torch.Tensor,
        lam: torch.Tensor,
        theta: torch.Tensor | None,
        biases: tuple[torch.Tensor | None, ...] = (None, None, None, None, None),
    ) -> tuple[FastLayer, torch.Tensor]:
        """Build a layer; returns it and the concatenated ``[2F, D]`` l1/l2 weight (l1 rows first)."""
        l12 = torch.cat([l1_w, l2_w], dim=0)
        qb, ob, b1, b2, b3 = biases
        l12_b = torch.cat([b1, b2]) if b1 is not None and b2 is not None else None
        lam = lam.to(device=qkvu_w.device, dtype=torch.float32)
        layer = FastLayer(
            qkvu_w=qkvu_w,
            out_w=out_w,
            l12_w=l12,
            l3_w=l3_w,
            decay=torch.exp(-lam),
            g_gamma=(-lam).contiguous(),
            theta=theta.reshape(theta.shape[0], -1).to(torch.float32).contiguous()
            if theta is not None
            else None,
            qkvu_b=qb,
            out_b=ob,
            l12_b=l12_b,
            l3_b=b3,
        )
        return layer, l12

    @classmethod
    def random(
        cls,
        *,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ffn: int,
        vocab: int,
        lrpe_layers: tuple[int, ...] = (0,),
        device: str | torch.device = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        std: float = 0.02,
        seed: int = 0,
    ) -> FastTransnormer:
        """Random weights of the given shape built directly on the device (benchmarks, tests)."""
        g = torch.Generator(device=device).manual_seed(seed)

        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=device, dtype=dtype, generator=g) * std

        d = d_model // n_heads
        layers = []
        for i in range(n_layers):
            theta = lrpe_theta_init(n_heads, d).to(device) if i in lrpe_layers else None
            layer, _ = cls.make_layer(
                w(4 * d_model, d_model),
                w(d_model, d_model),
                w(d_ffn, d_model),
                w(d_ffn, d_model),
                w(d_model, d_ffn),
                layer_decay(n_heads, i, n_layers),
                theta,
            )
            layers.append(layer)
        spec = FastSpec(d_model, d_model, n_heads, d_ffn, vocab, float(math.sqrt(d_model)))
        return cls(spec, w(vocab, d_model), layers)

    # -- state ------------------------------------------------------------------------------------
    def state_shapes(self) -> list[tuple[int, int, int]]:
        h, d = self.spec.n_heads, self.spec.head_dim
        return [state_shape(h, d, lw.theta is not None) for lw in self.layers]

    def new_state_pool(self, slots: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        dev = self.embed.device
        return [torch.zeros((slots, *s), device=dev, dtype=dtype) for s in self.state_shapes()]

    # -- compute ----------------------------------------------------------------------------------
    def packed_nosync(self) -> bool:
        """Whether packed prefill launches fla's kernels itself with a host-built chunk index (no
        device read per layer): once per model, ``packed_path_matches`` on every attention shape
        of its layers; bf16/fp16 weights only (fp32 prefill takes the exact reference ops)."""
        if self._packed_nosync is None:
            dt = self.embed.dtype
            # shapes fla runs (exact_prefill takes fp32 and heads narrower than 16 to reference ops)
            shapes = sorted({s for s in self.state_shapes() if min(s[1:]) >= 16})
            self._packed_nosync = bool(shapes) and dt in (torch.bfloat16, torch.float16)
            if self._packed_nosync:
                dev = self.embed.device
                self._packed_nosync = all(packed_path_matches(h, dk, d, dev, dt) for h, dk, d in shapes)
                if not self._packed_nosync:
                    log.warning("packed prefill: fla differs from the no-sync path; taking its public call")
        return self._packed_nosync

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        if self.skinny_gemm and b is None:
            from tnllm.model.kernels.gemv import skinny_linear, skinny_ok

            if skinny_ok(x.shape[0], w):
                return skinny_linear(x, w)
        return F.linear(x, w, b)

    def _mixers(self, x: torch.Tensor, a: torch.Tensor, i: int, attend) -> None:  # type: ignore[no-untyped-def]
        """Token mixer then channel mixer of layer i; on return x holds the new residual, a = SRMS(x)."""
        lw = self.layers[i]
        e = self.spec.d_attn
        z = self._linear(a, lw.qkvu_w, lw.qkvu_b)  # [R, 4E]: q | k | v | u
        o = attend(z, lw, i)  # [R, E]
        g = norm_gate(o, z[:, 3 * e :], self.spec.eps)
        add_rms(x, self._linear(g, lw.out_w, lw.out_b), a, self.spec.eps)
        h = self._linear(a, lw.l12_w, lw.l12_b)  # [R, 2F]
        f = self.spec.d_ffn
        g = glu_product(h) if self.glu_kernel else h[:, :f] * h[:, f:]
        add_rms(x, self._linear(g, lw.l3_w, lw.l3_b), a, self.spec.eps)

    def _run(self, ids: torch.Tensor, attend) -> torch.Tensor:  # type: ignore[no-untyped-def]
        rows = ids.shape[0]
        ids = ids.to(self.embed.device)
        x = torch.empty((rows, self.spec.d_model), device=ids.device, dtype=torch.float32)
        a = torch.empty((rows, self.spec.d_model), device=ids.device, dtype=self.embed.dtype)
        embed_rms(ids, self.embed, self.spec.embed_scale, x, a, self.spec.eps)
        for i in range(len(self.layers)):
            self._mixers(x, a, i, attend)
        return a  # SRMS of the final residual (the model's final norm)

    def _decode_row(
        self, input_ids: torch.Tensor, positions: torch.Tensor, pool: list[torch.Tensor], slots: torch.Tensor
    ) -> torch.Tensor:
        """Batch-1 decode with the row ops fused into the GEMVs (5 launches per layer)."""
        from tnllm.model.kernels.gemv import gemv_fused

        sp = self.spec
        e, f, eps, dt = sp.d_attn, sp.d_ffn, sp.eps, self.embed.dtype
        x = torch.empty((1, sp.d_model), device=input_ids.device, dtype=torch.float32)
        a = torch.empty((1, sp.d_model), device=input_ids.device, dtype=self.embed.dtype)
        embed_rms(input_ids, self.embed, sp.embed_scale, x, a, eps)
        for i, lw in enumerate(self.layers):
            z = gemv_fused(x, lw.qkvu_w, pro=1, eps=eps, out_dtype=dt)
            assert z is not None
            o = decode_attention(
                z[:, :e], z[:, e : 2 * e], z[:, 2 * e : 3 * e], pool[i], slots, lw.decay,
                positions=positions, theta=lw.theta,
            )  # fmt: skip
            gemv_fused(o, lw.out_w, pro=2, x2=z[:, 3 * e :], residual=x, eps=eps)
            h = gemv_fused(x, lw.l12_w, pro=1, eps=eps, out_dtype=dt)
            assert h is not None
            gemv_fused(h[:, :f], lw.l3_w, pro=3, x2=h[:, f:], residual=x, eps=eps)
        logits = gemv_fused(x, self.head, pro=1, eps=eps, out_dtype=dt)
        assert logits is not None
        return logits.float()

    def decode(
        self, input_ids: torch.Tensor, positions: torch.Tensor, pool: list[torch.Tensor], slots: torch.Tensor
    ) -> torch.Tensor:
        """One token for each of B rows; ``pool[l][slots]`` updated in place. Returns fp32 logits ``[B, V]``.

        ``slots`` may hold -1 for padding rows (their state is untouched, their logits meaningless).
        """
        e = self.spec.d_attn
        dev = self.embed.device
        positions, slots = positions.to(dev), slots.to(dev)
        if self.gemv_batch1 and input_ids.shape[0] == 1 and self.layers[0].qkvu_b is None:
            return self._decode_row(input_ids.to(dev), positions, pool, slots)

        def attend(z: torch.Tensor, lw: FastLayer, i: int) -> torch.Tensor:
            return decode_attention(
                z[:, :e],
                z[:, e : 2 * e],
                z[:, 2 * e : 3 * e],
                pool[i],
                slots,
                lw.decay,
                positions=positions,
                theta=lw.theta,
            )

        a = self._run(input_ids, attend)
        return self._linear(a, self.head, None).float()

    def prefill(
        self,
        input_ids: torch.Tensor,
        start_pos: int,
        pool: list[torch.Tensor],
        slot: int,
        last_only: bool = True,
    ) -> torch.Tensor:
        """Consume ``input_ids [T]`` at positions ``start_pos..`` from slot's state (updated in place).

        Returns fp32 logits ``[V]`` for the last token, or ``[T, V]`` with ``last_only=False``.
        """
        h = self.spec.n_heads
        t = input_ids.shape[0]
        d = self.spec.head_dim

        def attend(z: torch.Tensor, lw: FastLayer, i: int) -> torch.Tensor:
            q, k, v = prep_qkv(z, h, start_pos, lw.theta)
            o = prefill_attention(q, k, v, lw.g_gamma, pool[i][slot])
            return o.reshape(t, h * d)

        a = self._run(input_ids, attend)
        if last_only:
            return self._linear(a[-1:], self.head, None).float()[0]
        return F.linear(a, self.head).float()

    def prefill_many(
        self, chunks: list[tuple[list[int], int, int]], pool: list[torch.Tensor]
    ) -> torch.Tensor:
        """Several prompt chunks ``(ids, start_pos, slot)`` in one forward: the GEMMs and row ops run
        once over all their tokens, the attention per sequence through fla's packed (varlen) chunk
        kernel. Each slot's state is updated in place; returns fp32 logits ``[N, V]`` of each
        chunk's last token. One call per engine step instead of one per prompt: a step's launches
        (~600 kernels, host-bound for short prompts) are paid once. Nothing in it waits for the GPU
        where ``packed_nosync`` holds."""
        h, d = self.spec.n_heads, self.spec.head_dim
        dev = self.embed.device
        lengths = [len(chunk_ids) for chunk_ids, _, _ in chunks]
        slot_ids = [slot for _, _, slot in chunks]
        ids_host: list[int] = []
        pos_host: list[int] = []
        for chunk_ids, start, _ in chunks:
            ids_host.extend(chunk_ids)
            pos_host.extend(range(start, start + len(chunk_ids)))
        cu_host = [0, *itertools.accumulate(lengths)]
        nosync = self.packed_nosync()
        offsets, pairs = chunk_index_host(lengths) if nosync else ([], [])
        # every index the step needs in one host-to-device copy that does not wait for the GPU
        ids, positions, cu, slots, chunk_offsets, chunk_indices = pack_int64(
            [ids_host, pos_host, cu_host, slot_ids, offsets, pairs], dev
        )
        index = PackedIndex(cu, chunk_offsets, chunk_indices.view(-1, 2)) if nosync else None
        cu_cpu = None if nosync else torch.tensor(cu_host, dtype=torch.int64)  # fla's public call only
        t = len(ids_host)

        def attend(z: torch.Tensor, lw: FastLayer, i: int) -> torch.Tensor:
            q, k, v = prep_qkv(z, h, 0, lw.theta, positions=positions)
            o = prefill_attention_packed(
                q, k, v, lw.g_gamma, pool[i], slots, cu, lengths, slot_ids, cu_cpu, index=index
            )
            return o.reshape(t, h * d)

        a = self._run(ids, attend)
        last = a[cu[1:] - 1]  # each chunk's last token
        return self._linear(last, self.head, None).float()

    def warmup(
        self, pool: list[torch.Tensor], scratch_slot: int, lengths: tuple[int, ...] = (64, 1, 37, 300)
    ) -> None:
        """Compile and autotune every prefill/decode kernel variant the engine uses once (fla's first
        chunk call autotunes each variant, for seconds), using ``scratch_slot`` (and, for the several-prompt
        case, one neighbouring slot) and zeroing them again afterwards.

        The engine prefills through ``prefill_many``, so that is what is warmed. Triton compiles a
        kernel again for integer arguments of another class (1, a multiple of 16, anything else), so
        the lengths cover each class on both GEMM paths (skinny up to 128 rows, cuBLAS above), one
        chunk continues from an unaligned position, as chunked prefill does, and one call packs two
        prompts (fla's packed kernels treat one sequence and several differently): otherwise the
        first real prompts pay seconds of compilation inside a serving step."""
        dev = self.embed.device
        used = [scratch_slot]
        for t in lengths:
            self.prefill_many([([0] * t, 0, scratch_slot)], pool)
        self.prefill_many([([0] * 27, 37, scratch_slot)], pool)
        slots = pool[0].shape[0]
        if slots > 1:
            other = (scratch_slot - 1) % slots
            used.append(other)
            self.prefill_many([([0] * 37, 64, scratch_slot), ([0] * 64, 0, other)], pool)
        one = torch.zeros(1, dtype=torch.int64, device=dev)
        self.decode(one, one, pool, torch.full((1,), scratch_slot, dtype=torch.int64, device=dev))
        for p in pool:
            for slot in used:
                p[slot].zero_()
        torch.cuda.synchronize(dev)
