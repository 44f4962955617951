"""An independent, deliberately naive fp64 TransNormerLLM (token by token, O(T²)) used as a test oracle.

Written straight from docs/MODEL_SPEC.md §4 with plain loops and the official key names; it shares no code
with tnllm.model, so config keys (bias, norms, activations, scaling, heads, untied head) are checked
against the spec rather than against the implementation itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _act(name: str, x: Tensor) -> Tensor:
    if name in ("silu", "swish"):
        return x * torch.sigmoid(x)
    if name == "gelu":
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if name == "relu":
        return x.clamp(min=0)
    if name == "elu":
        return torch.where(x > 0, x, torch.expm1(x))
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "leak":
        return torch.where(x > 0, x, 0.01 * x)
    if name == "1+elu":
        return 1 + torch.where(x > 0, x, torch.expm1(x))
    if name == "2+elu":
        return 2 + torch.where(x > 0, x, torch.expm1(x))
    if name == "sine":
        return torch.sin(x)
    if name == "exp":
        return torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return x


def _slopes(h: int) -> list[float]:
    if h & (h - 1) == 0:
        return [2 ** (-8 * (i + 1) / h) for i in range(h)]
    p = 2 ** math.floor(math.log2(h))
    return [2 ** (-8 * (i + 1) / p) for i in range(p)] + [2 ** (-4 * (2 * m + 1) / p) for m in range(h - p)]


def naive_logits(cfg: dict, sd: dict[str, Tensor], ids: list[int]) -> Tensor:
    """Logits ``[T, V]`` (fp64) of one fresh sequence."""
    w = {k: v.double() for k, v in sd.items()}
    d_model, e, h, n_layers = (
        cfg["decoder_embed_dim"],
        cfg["hidden_dim"],
        cfg["decoder_attention_heads"],
        cfg["decoder_layers"],
    )
    d = e // h
    srms = cfg.get("norm_type", "simplermsnorm") == "simplermsnorm"
    bias = cfg.get("bias", False)
    lrpe_flags = cfg.get("linear_use_lrpe_list") or [0] * n_layers
    act = cfg.get("linear_act_fun", "silu")

    def norm(z: Tensor, name: str) -> Tensor:
        if srms:
            return z / torch.sqrt((z * z).mean(-1, keepdim=True) + 1e-6)
        return F.layer_norm(z, (z.shape[-1],), w[name + ".weight"], w[name + ".bias"], eps=1e-5)

    def lin(z: Tensor, name: str) -> Tensor:
        out = z @ w[name + ".weight"].T
        return out + w[name + ".bias"] if bias else out

    t = len(ids)
    scale = 1.0 if cfg.get("no_scale_embedding", False) else math.sqrt(d_model)
    x = w["model.embed_tokens.weight"][ids] * scale  # [T, D]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        q, k, v, u = lin(norm(x, p + "token_norm"), p + "token_mixer.qkvu_proj").split(e, dim=-1)
        heads = []
        for hh in range(h):
            sl = slice(hh * d, (hh + 1) * d)
            qh, kh, vh = _act(act, q[:, sl]), _act(act, k[:, sl]), v[:, sl]
            if lrpe_flags[i]:
                theta = w[p + "token_mixer.lrpe.theta"][hh, 0]  # [d]
                ang = torch.arange(t, dtype=torch.float64)[:, None] * theta[None]  # [T, d]
                qh = torch.cat([qh * torch.cos(ang), qh * torch.sin(ang)], -1)
                kh = torch.cat([kh * torch.cos(ang), kh * torch.sin(ang)], -1)
            lam = _slopes(h)[hh] * (1 - i / (n_layers - 1) + 1e-5)
            gap = (
                torch.arange(t, dtype=torch.float64)[:, None] - torch.arange(t, dtype=torch.float64)[None, :]
            )
            decay = torch.where(gap >= 0, torch.exp(-lam * gap.clamp(min=0)), 0.0)  # [T, T], causal
            heads.append(((qh @ kh.T) * decay) @ vh)
        o = norm(torch.cat(heads, -1), p + "token_mixer.norm")
        x = x + lin(u * o, p + "token_mixer.out_proj")
        c = norm(x, p + "channel_norm")
        x = x + lin(lin(c, p + "channel_mixer.l1") * lin(c, p + "channel_mixer.l2"), p + "channel_mixer.l3")
    head = w["lm_head.weight"] if cfg.get("tie_word_embeddings") is False else w["model.embed_tokens.weight"]
    return norm(x, "model.final_norm") @ head.T
