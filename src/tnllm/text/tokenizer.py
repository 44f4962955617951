"""The checkpoint's sentencepiece tokenizer (the chat template is ``tnllm.text.chat``, streaming
text ``tnllm.text.detok``, prompt rendering ``tnllm.text.prompt``).

Torch-free on purpose: the API process imports this module to count prompt tokens.

``Tokenizer`` reproduces the official ``BaiChuanTokenizer`` (a slow, LlamaTokenizer-like
sentencepiece tokenizer shipped with TransNormerLLM; docs/MODEL_SPEC.md §8):

* literal special-token strings in the text (``<s>``, ``</s>``, ``<unk>``, and any additional
  special tokens) map to their ids; every other stretch of text goes through ``sp.encode`` on its
  own (so each stretch gets sentencepiece's dummy-prefix space, as the slow HF path does);
* BOS/EOS are added only when ``tokenizer_config.json`` says so (the 7B file says false/false);
* decoding drops special ids and lets sentencepiece join the pieces (byte pieces included).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import sentencepiece as spm

from tnllm.errors import TokenizerError
from tnllm.text.chat import DEFAULT_CHAT_TEMPLATE, compile_chat_template, render_chat

TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass(frozen=True)
class SpecialTokens:
    """The special-token strings of a tokenizer (``None`` where the tokenizer has none).

    ``strip`` names tokens that swallow whitespace: ``(lstrip, rstrip)`` as in an AddedToken (the
    official files say False/False for all three tokens).
    """

    bos: str | None = "<s>"
    eos: str | None = "</s>"
    unk: str | None = "<unk>"
    pad: str | None = None
    additional: tuple[str, ...] = ()
    strip: Mapping[str, tuple[bool, bool]] = field(default_factory=dict)


def _token_content(value: Any) -> str | None:
    """A special token as written in the JSON files: a string or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise TokenizerError(f"cannot read special token {value!r}")


def _token_strip(values: Iterable[Any]) -> dict[str, tuple[bool, bool]]:
    """``content -> (lstrip, rstrip)`` of the AddedToken dicts that strip whitespace."""
    out: dict[str, tuple[bool, bool]] = {}
    for value in values:
        if isinstance(value, Mapping) and (value.get("lstrip") or value.get("rstrip")):
            out[str(value.get("content"))] = (bool(value.get("lstrip")), bool(value.get("rstrip")))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return data


def _template_from_config(config: Mapping[str, Any], path: Path) -> str | None:
    """``chat_template`` of tokenizer_config.json: a string, or HF's list of named templates."""
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        if isinstance(named.get("default"), str):
            return str(named["default"])
    raise TokenizerError(f"{path}: chat_template must be a string or a list with a 'default' template")


class Tokenizer:
    """Sentencepiece tokenizer with the official BaiChuanTokenizer's encode/decode behaviour."""

    def __init__(
        self,
        sp_model: spm.SentencePieceProcessor,
        *,
        special_tokens: SpecialTokens | None = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        chat_template: str | None = None,
    ) -> None:
        self.sp = sp_model
        self._size = int(sp_model.get_piece_size())  # asked on every decode: a SWIG call each time
        self.special_tokens = special_tokens or SpecialTokens()
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
        st = self.special_tokens
        self.bos_id = self._special_id(st.bos)
        self.eos_id = self._special_id(st.eos)
        self.unk_id = self._special_id(st.unk)
        self.pad_id = self._special_id(st.pad)
        specials = [t for t in (st.bos, st.eos, st.unk, st.pad, *st.additional) if t]
        # string -> id of every special token; ids looked up through sentencepiece, like the official class
        self.special_token_ids: dict[str, int] = {t: int(self.sp.piece_to_id(t)) for t in specials}
        self.special_ids: frozenset[int] = frozenset(self.special_token_ids.values())
        # Longest first, so one special token that prefixes another cannot shadow it.
        alternatives = sorted(self.special_token_ids, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        chat_template: str | None = None,
    ) -> Tokenizer:
        """Read ``tokenizer.model`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` in ``path``.

        The chat template is, in order of precedence: ``chat_template`` (e.g. Settings.chat_template),
        ``chat_template.jinja`` in the folder, the ``chat_template`` key of tokenizer_config.json, the
        built-in ChatML template.
        """
        folder = Path(path)
        model_file = folder / TOKENIZER_FILE
        if not model_file.is_file():
            raise TokenizerError(f"{folder} has no {TOKENIZER_FILE}")
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(model_file))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{model_file} is not a sentencepiece model: {exc}") from exc

        config_file = folder / TOKENIZER_CONFIG_FILE
        config = _read_json(config_file) if config_file.is_file() else {}
        map_file = folder / SPECIAL_TOKENS_MAP_FILE
        token_map = _read_json(map_file) if map_file.is_file() else {}
        # special_tokens_map.json wins over tokenizer_config.json, as in transformers' loader.
        merged = {**config, **token_map}
        defaults = SpecialTokens()
        values = {k: merged.get(f"{k}_token", getattr(defaults, k)) for k in ("bos", "eos", "unk", "pad")}
        extra = list(merged.get("additional_special_tokens") or [])
        special = SpecialTokens(
            **{k: _token_content(v) for k, v in values.items()},
            additional=tuple(t for t in map(_token_content, extra) if t),
            strip=_token_strip([*values.values(), *extra]),
        )
        template = chat_template
        if template is None and (folder / CHAT_TEMPLATE_FILE).is_file():
            template = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        if template is None:
            template = _template_from_config(config, config_file)
        return cls(
            sp,
            special_tokens=special,
            # the official class defaults (add BOS, no EOS) apply only when the file is silent
            add_bos_token=bool(config.get("add_bos_token", True)),
            add_eos_token=bool(config.get("add_eos_token", False)),
            chat_template=template,
        )

    def _special_id(self, token: str | None) -> int | None:
        return None if token is None else int(self.sp.piece_to_id(token))

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the sentencepiece model."""
        return self._size

    # ----------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; BOS/EOS only as tokenizer_config.json asks (and add_special_tokens)."""
        ids: list[int] = []
        if add_special_tokens and self.add_bos_token and self.bos_id is not None:
            ids.append(self.bos_id)
        for piece, is_special in self._split_on_special_tokens(text):
            if is_special:
                ids.append(self.special_token_ids[piece])
            elif piece:
                ids.extend(self.sp.encode(piece))
        if add_special_tokens and self.add_eos_token and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _split_on_special_tokens(self, text: str) -> list[tuple[str, bool]]:
        """``text`` cut into (stretch, is_special) parts, whitespace stripped next to stripping tokens."""
        parts: list[tuple[str, bool]] = []
        pos = 0
        if self._special_re is not None:
            for match in self._special_re.finditer(text):
                parts.append((text[pos : match.start()], False))
                parts.append((match.group(), True))
                pos = match.end()
        parts.append((text[pos:], False))
        strip = self.special_tokens.strip
        for i, (piece, is_special) in enumerate(parts):
            lstrip, rstrip = strip.get(piece, (False, False)) if is_special else (False, False)
            if lstrip:
                parts[i - 1] = (parts[i - 1][0].rstrip(), False)
            if rstrip:
                parts[i + 1] = (parts[i + 1][0].lstrip(), False)
        return parts

    def count_tokens(self, text: str) -> int:
        """Length of ``encode(text)``."""
        return len(self.encode(text))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``. Ids outside the tokenizer's vocabulary have no text and are dropped.

        With ``skip_special_tokens=False`` special tokens appear as their literal strings (the
        official class would also insert a space before each one: a display quirk not copied).
        """
        size = self._size
        kept = [i for i in map(int, ids) if 0 <= i < size]
        if skip_special_tokens:
            return str(self.sp.decode([i for i in kept if i not in self.special_ids]))
        parts: list[str] = []
        run: list[int] = []
        for i in kept:
            if i in self.special_ids:
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                parts.append(self.sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            parts.append(self.sp.decode(run))
        return "".join(parts)

    def id_to_piece(self, token_id: int) -> str:
        """The sentencepiece piece of one id."""
        return str(self.sp.id_to_piece(int(token_id)))

    # ----------------------------------------------------------------------------------------
    @cached_property
    def _compiled_template(self) -> Any:
        return compile_chat_template(self.chat_template)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render exactly this conversation into the prompt text (not token ids); no system message is
        added (``tnllm.text.prompt.render_prompt`` adds the default one). Raises ``ValueError``
        naming the problem for a malformed conversation."""
        return render_chat(
            self._compiled_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.special_tokens.bos or "",
            eos_token=self.special_tokens.eos or "",
        )


def load_tokenizer(path: str | Path, settings: Any | None = None) -> Tokenizer | None:
    """The tokenizer of a checkpoint folder, or ``None`` when it has no tokenizer.model.

    ``settings`` (an ``tnllm.config.Settings``) supplies ``chat_template``.
    """
    if not (Path(path) / TOKENIZER_FILE).is_file():
        return None
    return Tokenizer.from_pretrained(path, chat_template=settings.chat_template if settings else None)
