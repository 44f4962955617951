"""transformers integration without ``trust_remote_code``: our implementation behind the Auto classes.

Call :func:`register_with_transformers` once; then ``AutoModelForCausalLM.from_pretrained(path)`` on a
folder whose config.json has ``model_type: transnormer`` returns :class:`TransnormerForCausalLMHF`
(weights loaded by our own loader) and ``generate()`` works, greedy, sampling and beam search. The
released 7B config has no ``model_type``, so the Auto classes cannot pick a class for it without
remote code: use ``TransnormerForCausalLMHF.from_pretrained(path)`` directly there.

The generation cache is our per-sequence recurrent state (:class:`TransnormerState`): fixed size per
row, each row with its own position count. Padding tokens (``attention_mask == 0``) are dropped from
their row, so left or right padding is neutral (unlike the official code, docs/MODEL_SPEC.md §10 Q2).
Inference only: no gradients flow through this wrapper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from tnllm.errors import CheckpointError
from tnllm.model.config import MODEL_TYPE, TransnormerConfig
from tnllm.model.loading import load_pretrained
from tnllm.model.modeling import TransnormerLM


def _cache_key() -> str:
    """Name under which generate() carries the cache ("cache" in transformers >= 5.2x)."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:
        return "past_key_values"
    return str(ALL_CACHE_NAMES[0])


CACHE_KEY = _cache_key()
_CACHE_NAMES = (CACHE_KEY, "past_key_values", "cache")


class TransnormerHFConfig(PretrainedConfig):
    """The official config keys as a transformers config (``model_type: transnormer``)."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # noqa: RUF012 - transformers' convention
    attribute_map = {  # noqa: RUF012
        "hidden_size": "decoder_embed_dim",
        "num_hidden_layers": "decoder_layers",
        "num_attention_heads": "decoder_attention_heads",
    }

    def __init__(
        self,
        vocab_size: int = 64000,
        decoder_embed_dim: int = 1024,
        decoder_layers: int = 24,
        decoder_attention_heads: int = 8,
        hidden_dim: int = 1024,
        glu_dim: int = 2816,
        linear_use_lrpe_list: list[int] | None = None,
        no_scale_embedding: bool = False,
        norm_type: str = "simplermsnorm",
        linear_act_fun: str = "silu",
        bias: bool = False,
        init_std: float = 0.02,
        add_bos_token: bool = False,
        use_cache: bool = True,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.decoder_embed_dim = decoder_embed_dim
        self.decoder_layers = decoder_layers
        self.decoder_attention_heads = decoder_attention_heads
        self.hidden_dim = hidden_dim
        self.glu_dim = glu_dim
        self.linear_use_lrpe_list = list(linear_use_lrpe_list or [])
        self.no_scale_embedding = no_scale_embedding
        self.norm_type = norm_type
        self.linear_act_fun = linear_act_fun
        self.bias = bias
        self.init_std = init_std
        self.add_bos_token = add_bos_token
        self.use_cache = use_cache
        super().__init__(**kwargs)
        # Set after the base __init__: transformers 4.x pops these with its own defaults.
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.tie_word_embeddings = tie_word_embeddings

    def to_native(self) -> TransnormerConfig:
        raw = {k: v for k, v in self.to_dict().items() if k not in ("architectures", "auto_map")}
        raw["model_type"] = MODEL_TYPE
        raw["tie_word_embeddings"] = bool(getattr(self, "tie_word_embeddings", True))
        return TransnormerConfig.from_dict(raw, source="transformers config")


class TransnormerState:
    """Generation cache: per layer fp32 state ``[B, H, dk, d]`` and tokens consumed per row ``[B]``."""

    is_compileable = False

    def __init__(self, layers: list[Tensor], positions: Tensor) -> None:
        self.layers = layers
        self.positions = positions

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.positions.max().item()) if self.positions.numel() else 0

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """In place (the transformers 4.x beam-search hook)."""
        moved = self.reorder(beam_idx)
        self.layers, self.positions = moved.layers, moved.positions

    def reorder(self, beam_idx: Tensor) -> TransnormerState:
        idx = beam_idx.to(self.positions.device)
        return TransnormerState(
            [s.index_select(0, idx) for s in self.layers], self.positions.index_select(0, idx)
        )


class TransnormerForCausalLMHF(PreTrainedModel, GenerationMixin):
    """A transformers ``PreTrainedModel`` around :class:`TransnormerLM` (same parameter names)."""

    config_class = TransnormerHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["DecoderLayer"]  # noqa: RUF012
    _is_stateful = True  # transformers then refuses assisted generation clearly
    _supports_cache_class = False

    def __init__(self, config: TransnormerHFConfig, lm: TransnormerLM | None = None) -> None:
        super().__init__(config)
        lm = lm if lm is not None else TransnormerLM(config.to_native())
        object.__setattr__(self, "_lm", lm)  # reachable, but its modules are registered below only once
        self.model = lm.model
        self.lm_head = lm.lm_head
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Never re-initialise: weights come from the checkpoint (inference only)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache is the recurrent state, created by forward()

    @property
    def native(self) -> TransnormerLM:
        lm: TransnormerLM = self.__dict__["_lm"]
        return lm

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> torch.nn.Module | None:
        return self.lm_head

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | Path, *model_args: Any, config: Any = None, **kwargs: Any
    ) -> TransnormerForCausalLMHF:
        """Load a local checkpoint folder with our loader (``dtype``/``torch_dtype``, ``device_map``)."""
        path = Path(pretrained_model_name_or_path)
        if not path.is_dir():
            raise CheckpointError(
                f"{path}: not a local checkpoint folder (download it first: `tnllm download`)"
            )
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        device = _device(kwargs.pop("device_map", None) or kwargs.pop("device", None))
        raw = (
            json.loads((path / "config.json").read_text(encoding="utf-8"))
            if (path / "config.json").exists()
            else {}
        )
        native = TransnormerConfig.from_file(path)
        if dtype in (None, "auto"):
            dtype = native.torch_dtype if dtype == "auto" and native.torch_dtype else torch.float32
        lm = load_pretrained(path, device=device, dtype=dtype)
        hf_config = config if isinstance(config, TransnormerHFConfig) else TransnormerHFConfig(**raw)
        model = cls(hf_config, lm=lm)
        if (path / "generation_config.json").exists():
            model.generation_config = GenerationConfig.from_pretrained(path)
        return model.eval()

    # ---- forward ----------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        num_logits_to_keep: int = 0,
        inputs_embeds: Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """input_ids ``[B, T]``; with a state, continues each row from it (positions per row)."""
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("TransnormerForCausalLMHF needs input_ids (inputs_embeds are not supported)")
        state = next((kwargs.pop(k) for k in _CACHE_NAMES if kwargs.get(k) is not None), None)
        last_only = (logits_to_keep or num_logits_to_keep) == 1  # the name changed in transformers 4.50
        input_ids = input_ids.to(self.native.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.native.device)[:, -input_ids.shape[1] :].bool()
        logits, state = self._consume(input_ids, attention_mask, state, last_only)
        loss = None
        if labels is not None:
            flat = logits[:, :-1].reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(flat, labels[:, 1:].reshape(-1).to(flat.device), ignore_index=-100)
        cache: dict[str, Any] = {CACHE_KEY: state if use_cache is not False else None}
        return CausalLMOutputWithPast(loss=loss, logits=logits, **cache)

    def _consume(
        self, ids: Tensor, mask: Tensor | None, state: TransnormerState | None, last_only: bool
    ) -> tuple[Tensor, TransnormerState]:
        lm = self.native
        b, t = ids.shape
        if state is None:
            layers = [torch.zeros((b, *s), dtype=torch.float32, device=lm.device) for s in lm.state_shapes()]
            state = TransnormerState(layers, torch.zeros(b, dtype=torch.long, device=lm.device))
        if t == 1 and state.positions.any():  # decode step: one recurrent step for the whole batch
            logits, new = lm.run(ids, state.positions[:, None], state.layers, step=True, last_only=True)
            if mask is None or bool(mask.all()):
                return logits.float(), TransnormerState(new, state.positions + 1)
            keep = mask[:, 0]  # a masked new token must leave its row's state untouched
            layers = [
                torch.where(keep[:, None, None, None], n, o) for n, o in zip(new, state.layers, strict=True)
            ]
            return logits.float(), TransnormerState(layers, state.positions + keep.long())
        if mask is None or bool(mask.all()):
            if bool((state.positions == state.positions[0]).all()):  # same length rows: one batched prefill
                pos = state.positions[:1, None] + torch.arange(t, device=ids.device)
                logits, new = lm.run(ids, pos.expand(b, t), state.layers, step=False, last_only=last_only)
                return logits.float(), TransnormerState(new, state.positions + t)
            mask = torch.ones_like(ids, dtype=torch.bool)
        return self._consume_ragged(ids, mask, state, last_only)

    def _consume_ragged(
        self, ids: Tensor, mask: Tensor, state: TransnormerState, last_only: bool
    ) -> tuple[Tensor, TransnormerState]:
        """Rows one by one, padding dropped: a pad neither advances, decays nor feeds the state."""
        lm = self.native
        b, t = ids.shape
        out = torch.zeros(
            (b, 1 if last_only else t, lm.config.vocab_size), dtype=torch.float32, device=ids.device
        )
        layers = [s.clone() for s in state.layers]
        positions = state.positions.clone()
        for row in range(b):
            real = ids[row][mask[row]]
            n = int(real.shape[0])
            if n == 0:
                continue
            start = int(positions[row])
            pos = torch.arange(start, start + n, device=ids.device)[None]
            rows = [s[row : row + 1] for s in layers]
            logits, new = lm.run(real[None], pos, rows, step=False, last_only=last_only)
            if last_only:
                out[row, 0] = logits[0, -1].float()
            else:
                out[row, mask[row]] = logits[0].float()
                # generate() reads column -1: right-padded rows repeat their last real logits there
                last = int(mask[row].nonzero()[-1])
                out[row, last + 1 :] = logits[0, -1].float()
            for layer, s in zip(layers, new, strict=True):
                layer[row] = s[0]
            positions[row] += n
        return out, TransnormerState(layers, positions)

    # ---- generation hooks -----------------------------------------------------------------
    def prepare_inputs_for_generation(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """First call: the whole prompt; later calls: only the newest token plus the state."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError(
                "TransnormerForCausalLMHF.generate needs input_ids (inputs_embeds are not supported)"
            )
        state = next((kwargs[k] for k in _CACHE_NAMES if kwargs.get(k) is not None), None)
        inputs: dict[str, Any] = {
            "input_ids": input_ids if state is None else input_ids[:, -1:],
            "attention_mask": attention_mask,
            "use_cache": kwargs.get("use_cache", True),
            CACHE_KEY: state,
        }
        for key in ("logits_to_keep", "num_logits_to_keep"):
            if kwargs.get(key) is not None:
                inputs[key] = kwargs[key]
        return inputs

    def _reorder_cache(self, cache: TransnormerState, beam_idx: Tensor) -> TransnormerState:
        return cache.reorder(beam_idx)


def _device(spec: Any) -> torch.device:
    if spec is None:
        return torch.device("cpu")
    if isinstance(spec, dict):
        devices = set(spec.values())
        if len(devices) != 1:
            raise ValueError("device_map: only a single device is supported")
        spec = devices.pop()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(spec, int):
        return torch.device("cuda", spec)
    return torch.device(spec)


def register_with_transformers() -> None:
    """Register the config and model classes for ``model_type: transnormer`` (idempotent)."""
    AutoConfig.register(MODEL_TYPE, TransnormerHFConfig, exist_ok=True)
    AutoModelForCausalLM.register(TransnormerHFConfig, TransnormerForCausalLMHF, exist_ok=True)
