"""The closed-form constants (tnllm.model.formulas) pinned to the values in docs/MODEL_SPEC.md."""

from __future__ import annotations

import torch

from tnllm.model import formulas
from tnllm.model.config import TransnormerConfig
from tnllm.model.modeling import TransnormerLM

# docs/MODEL_SPEC.md §4 step 5, H = 32 (fp32, 9 significant digits)
SLOPES_32 = [
    "0.840896428",
    "0.707106769",
    "0.594603539",
    "0.5",
    "0.420448214",
    "0.353553385",
    "0.297301769",
    "0.25",
    "0.210224107",
    "0.176776692",
    "0.148650885",
    "0.125",
    "0.105112053",
    "0.0883883461",
    "0.0743254423",
    "0.0625",
    "0.0525560267",
    "0.0441941731",
    "0.0371627212",
    "0.03125",
    "0.0262780134",
    "0.0220970865",
    "0.0185813606",
    "0.015625",
    "0.0131390067",
    "0.0110485433",
    "0.00929068029",
    "0.0078125",
    "0.00656950334",
    "0.00552427163",
    "0.00464534014",
    "0.00390625",
]


def test_slopes_match_spec() -> None:
    """docs/MODEL_SPEC.md §4 step 5: powers of two and not, and the 7B list."""
    assert formulas.base_slopes(4) == [0.25, 0.0625, 0.015625, 0.00390625]
    assert formulas.base_slopes(6) == [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    s32 = torch.tensor(formulas.base_slopes(32), dtype=torch.float32)
    assert [f"{x:.9g}" for x in s32.tolist()] == SLOPES_32


def test_layer_factors_match_spec() -> None:
    """docs/MODEL_SPEC.md §4 step 5: the factor is rounded to fp32 before the product (7B: L = 30)."""
    factors = [formulas.layer_decay(32, i, 30)[3].item() / 0.5 for i in (0, 1, 28, 29)]  # base 0.5
    assert [f"{x:.9g}" for x in factors] == ["1.00001001", "0.965527236", "0.0344927572", "9.99999975e-06"]
    lam = formulas.layer_decay(32, 1, 30)
    assert lam.dtype == torch.float32 and lam.shape == (32,)
    base = torch.tensor(formulas.base_slopes(32), dtype=torch.float32)
    assert torch.equal(lam, base * torch.tensor(1 - 1 / 29 + 1e-5, dtype=torch.float32))


def test_lrpe_theta_init_matches_spec() -> None:
    """docs/MODEL_SPEC.md §4 step 4: θ[h,0,j] = 10000^(−2·(h·(D//H)+j)/(H·(D//H))) in fp32, [H, 1, D//H]."""
    theta = formulas.lrpe_theta_init(4, 8)
    assert theta.shape == (4, 1, 8) and theta.dtype == torch.float32
    assert theta[0, 0, 0].item() == 1.0
    want = torch.tensor([10000 ** (-2 * (h * 8 + j) / 32) for h in range(4) for j in range(8)])
    assert torch.allclose(theta.flatten(), want.float(), rtol=1e-6)


def test_state_sizes_match_spec() -> None:
    """docs/MODEL_SPEC.md §7.2: 7B state is 16,252,928 numbers per sequence (65,011,712 B fp32)."""
    shapes = [formulas.state_shape(32, 128, i == 0) for i in range(30)]
    assert shapes[:2] == [(32, 256, 128), (32, 128, 128)]
    assert formulas.state_bytes(shapes) == 65_011_712
    assert formulas.state_bytes(shapes, torch.bfloat16) == 32_505_856


def test_the_reference_model_uses_the_formulas() -> None:
    cfg = TransnormerConfig.from_dict(
        {"vocab_size": 99, "decoder_embed_dim": 32, "hidden_dim": 32, "decoder_attention_heads": 4,
         "decoder_layers": 3, "glu_dim": 37, "linear_use_lrpe_list": [1, 0, 0]}
    )  # fmt: skip
    with torch.device("meta"):
        model = TransnormerLM(cfg)
    assert model.state_shapes() == [formulas.state_shape(4, 8, i == 0) for i in range(3)]
    decay = torch.stack([formulas.layer_decay(4, i, 3) for i in range(3)])
    assert torch.equal(model._decay_cpu, decay)
