"""TransNormerLLM configuration: the official ``config.json`` format, read and written (torch-free).

Every key the official model code honours is honoured here (docs/MODEL_SPEC.md §2); unknown keys are ignored.
The official format is recognised by ``architectures`` / ``auto_map`` / its characteristic keys,
because the released 7B config has no ``model_type``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tnllm.errors import ConfigError

MODEL_TYPE = "transnormer"
ARCHITECTURE = "TransnormerForCausalLM"
AUTO_MAP = {
    "AutoConfig": "configuration_transnormer.TransnormerConfig",
    "AutoModelForCausalLM": "modeling_transnormer.TransnormerForCausalLM",
}
# Activation names the official code understands; any other string means identity (as there).
ACTIVATIONS = ("silu", "swish", "gelu", "relu", "elu", "sigmoid", "leak", "1+elu", "2+elu", "sine", "exp")
SRMS_NORM = "simplermsnorm"
# Keys that only an official TransNormerLLM config carries.
_SIGNATURE_KEYS = ("decoder_embed_dim", "decoder_layers", "decoder_attention_heads", "glu_dim")
_NULLABLE = ("pad_token_id", "bos_token_id", "eos_token_id", "torch_dtype", "model_max_length")


@dataclass(frozen=True)
class TransnormerConfig:
    """Hyper-parameters of one checkpoint (official key names; defaults are the official class's)."""

    vocab_size: int = 64000
    decoder_embed_dim: int = 1024
    decoder_layers: int = 24
    decoder_attention_heads: int = 8
    hidden_dim: int = 1024
    glu_dim: int = 2816
    linear_use_lrpe_list: tuple[int, ...] = ()
    no_scale_embedding: bool = False
    norm_type: str = SRMS_NORM
    linear_act_fun: str = "silu"
    bias: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    init_std: float = 0.02
    add_bos_token: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = True
    torch_dtype: str | None = None
    model_max_length: int | None = None

    def __post_init__(self) -> None:
        self._validate()

    # ---- derived sizes (docs/MODEL_SPEC.md §1) -----------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.decoder_layers

    @property
    def num_heads(self) -> int:
        return self.decoder_attention_heads

    @property
    def head_dim(self) -> int:
        """``d = E / H``: per-head width of q, k and v."""
        return self.hidden_dim // self.decoder_attention_heads

    @property
    def ffn_dim(self) -> int:
        """``F``; ``glu_dim == -1`` means ``D``."""
        return self.decoder_embed_dim if self.glu_dim == -1 else self.glu_dim

    @property
    def lrpe_layers(self) -> tuple[bool, ...]:
        """Per layer: does it apply LRPE."""
        return tuple(bool(f) for f in self.linear_use_lrpe_list[: self.decoder_layers])

    @property
    def embed_scale(self) -> float:
        return 1.0 if self.no_scale_embedding else math.sqrt(self.decoder_embed_dim)

    @property
    def uses_srms(self) -> bool:
        """``False`` switches every norm to an affine LayerNorm (eps 1e-5), as the official code does."""
        return self.norm_type == SRMS_NORM

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    # ---- reading / writing ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> TransnormerConfig:
        """Build from an official config dict; ``source`` names the file in error messages."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        _check_architecture(raw, source)
        values: dict[str, Any] = {}
        names = {f.name for f in fields(cls)}
        for key in names & raw.keys():
            if raw[key] is not None or key in _NULLABLE:
                values[key] = raw[key]
        lrpe = raw.get("linear_use_lrpe_list") or []
        if not lrpe and "linear_use_lrpe" in raw:
            # Official quirk (docs/MODEL_SPEC.md §10 Q10): an empty list means "use linear_use_lrpe on
            # every layer".
            lrpe = [int(bool(raw["linear_use_lrpe"]))] * int(raw.get("decoder_layers", cls.decoder_layers))
        if not isinstance(lrpe, list | tuple):
            raise ConfigError(f"{source}: linear_use_lrpe_list must be a list of 0/1 flags, got {lrpe!r}")
        values["linear_use_lrpe_list"] = tuple(int(bool(x)) for x in lrpe)
        if isinstance(values.get("eos_token_id"), list):
            values["eos_token_id"] = tuple(values["eos_token_id"])
        try:
            return cls(**values)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: invalid TransNormerLLM config: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> TransnormerConfig:
        """Read ``config.json`` (or the folder holding it)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: no config.json (not a TransNormerLLM checkpoint folder)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{p}: cannot read config: {err}") from None
        return cls.from_dict(raw, source=str(p))

    def to_official_dict(self) -> dict[str, Any]:
        """The config as the official code writes it (with architectures / auto_map / model_type)."""
        out: dict[str, Any] = {
            "architectures": [ARCHITECTURE],
            "auto_map": dict(AUTO_MAP),
            "model_type": MODEL_TYPE,
        }
        for key, value in asdict(self).items():
            if key == "tie_word_embeddings" and value:
                continue  # released configs omit it (default true)
            if value is None and key in ("torch_dtype", "model_max_length"):
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def with_updates(self, **changes: Any) -> TransnormerConfig:
        """A copy with some keys changed (validated again)."""
        values = asdict(self)
        values.update(changes)
        if "linear_use_lrpe_list" in values:
            values["linear_use_lrpe_list"] = tuple(values["linear_use_lrpe_list"])
        return TransnormerConfig(**values)

    # ---- validation -----------------------------------------------------------------------
    def _validate(self) -> None:
        for key in (
            "vocab_size",
            "decoder_embed_dim",
            "decoder_layers",
            "decoder_attention_heads",
            "hidden_dim",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if not isinstance(self.glu_dim, int) or not (self.glu_dim > 0 or self.glu_dim == -1):
            raise ConfigError(f"glu_dim must be a positive integer or -1, got {self.glu_dim!r}")
        if self.decoder_layers < 2:
            # The official per-layer decay factor 1 - i/(L-1) divides by zero for L = 1
            # (docs/MODEL_SPEC.md §10 Q9).
            raise ConfigError(f"decoder_layers must be >= 2, got {self.decoder_layers}")
        if self.hidden_dim % self.decoder_attention_heads:
            raise ConfigError(
                f"hidden_dim {self.hidden_dim} is not divisible by decoder_attention_heads "
                f"{self.decoder_attention_heads}"
            )
        if self.linear_use_lrpe_list and len(self.linear_use_lrpe_list) < self.decoder_layers:
            raise ConfigError(
                f"linear_use_lrpe_list has {len(self.linear_use_lrpe_list)} flags for "
                f"{self.decoder_layers} layers"
            )
        if any(self.lrpe_layers) and self.hidden_dim != self.decoder_embed_dim:
            # The official LRPE table is sized from D // H while q/k have E / H features (§10 Q13).
            raise ConfigError(
                f"LRPE needs hidden_dim == decoder_embed_dim, got {self.hidden_dim} != "
                f"{self.decoder_embed_dim}"
            )
        if not isinstance(self.linear_act_fun, str) or not isinstance(self.norm_type, str):
            raise ConfigError("linear_act_fun and norm_type must be strings")


def _check_architecture(raw: dict[str, Any], source: str) -> None:
    """Refuse a config of another architecture; accept the official format by its markers."""
    model_type = raw.get("model_type")
    if model_type is not None and model_type != MODEL_TYPE:
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not a TransNormerLLM ({MODEL_TYPE!r}) config"
        )
    archs = raw.get("architectures")
    if archs and not any("transnormer" in str(a).lower() for a in archs):
        raise ConfigError(f"{source}: architectures {archs!r} is not a TransNormerLLM architecture")
    auto_map = raw.get("auto_map") or {}
    auto_ok = isinstance(auto_map, dict) and any("transnormer" in str(v).lower() for v in auto_map.values())
    keys_ok = all(k in raw for k in _SIGNATURE_KEYS)
    if not (model_type == MODEL_TYPE or archs or auto_ok or keys_ok):
        raise ConfigError(
            f"{source}: not a TransNormerLLM config (no model_type 'transnormer', no Transnormer "
            f"architectures/auto_map entry, and not the keys {', '.join(_SIGNATURE_KEYS)})"
        )
