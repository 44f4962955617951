"""The checkpoint's sentencepiece tokenizer, incremental detokenisation and the chat template.

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

TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The ChatML template that older transformers applied by default to tokenizers without their own
# (the TransNormerLLM tutorial's prompt format). The default system message is added in Python
# (see ``Tokenizer.apply_chat_template``) so overriding templates get it too.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT_ROLES = ("system", "user", "assistant")
REPLACEMENT_CHAR = "\ufffd"


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
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> None:
        self.sp = sp_model
        self._size = int(sp_model.get_piece_size())  # asked on every decode: a SWIG call each time
        self.special_tokens = special_tokens or SpecialTokens()
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
        self.system_prompt = system_prompt
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
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> Tokenizer:
        """Read ``tokenizer.model`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` in ``path``.

        The chat template is, in order of precedence: ``chat_template`` (e.g. Settings.chat_template),
        ``chat_template.jinja`` in the folder, the ``chat_template`` key of tokenizer_config.json, the
        built-in ChatML template. ``system_prompt`` is the system message added when a conversation
        has none (``None`` or ``""``: add none).
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
            system_prompt=system_prompt,
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
        """Render a conversation into the prompt text (not token ids).

        ``messages`` are ``{"role": "system"|"user"|"assistant", "content": str}``; when none has role
        system and ``system_prompt`` is set, ``{"role": "system", "content": system_prompt}`` is put
        first. Raises ``ValueError`` naming the problem for a malformed conversation.
        """
        checked = validate_messages(messages)
        if self.system_prompt and not any(m["role"] == "system" for m in checked):
            checked.insert(0, {"role": "system", "content": self.system_prompt})
        try:
            return str(
                self._compiled_template.render(
                    messages=checked,
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.special_tokens.bos or "",
                    eos_token=self.special_tokens.eos or "",
                )
            )
        except TokenizerError:
            raise
        except Exception as exc:  # jinja2 errors of a user-supplied template
            raise TokenizerError(f"chat template failed: {exc}") from exc


def validate_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Check a conversation's shape; returns plain dict copies."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {role, content} objects")
    if not messages:
        raise ValueError("messages must not be empty")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise ValueError(f"messages[{i}] must be an object with role and content")
        role, content = msg.get("role"), msg.get("content")
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": str(role), "content": content})
    return out


def compile_chat_template(source: str) -> Any:
    """Compile a Jinja chat template in a sandbox (templates may come from a downloaded folder)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TokenizerError(f"chat template: {message}")

    # trim_blocks/lstrip_blocks as transformers renders templates, so published templates match
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise TokenizerError(f"invalid chat template: {exc}") from exc


def load_tokenizer(path: str | Path, settings: Any | None = None) -> Tokenizer | None:
    """The tokenizer of a checkpoint folder, or ``None`` when it has no tokenizer.model.

    ``settings`` (an ``tnllm.config.Settings``) supplies ``chat_template`` and ``system_prompt``.
    """
    if not (Path(path) / TOKENIZER_FILE).is_file():
        return None
    if settings is None:
        return Tokenizer.from_pretrained(path)
    return Tokenizer.from_pretrained(
        path, chat_template=settings.chat_template, system_prompt=settings.system_prompt
    )


class IncrementalDecoder:
    """Streaming text for a growing list of generated ids.

    The text is that of decoding the whole id list (sentencepiece pieces can merge, and byte pieces
    only form a character together); each ``push`` returns only the new suffix. Text ending in
    U+FFFD is held back while it may still be an incomplete UTF-8 character; ``flush`` releases it
    at the end. The concatenation of every returned delta equals ``tokenizer.decode(ids)``.

    Only a short window is decoded per push (as text-generation-inference does): the ids emitted
    by the previous delta plus the new ones. Both decodes of a window start with the same piece, so
    sentencepiece's leading-space removal cancels out and the difference is the full-text suffix.
    Ids that ``decode`` drops whatever surrounds them (outside the vocabulary; special tokens when
    skipped) never enter ``ids``: they add no text, and since no text means no delta, a long run of
    them would otherwise widen the window, and the cost of every push, token after token.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_offset = 0  # window start: first id of the previous delta
        self._read_offset = 0  # ids before this are emitted
        self._parts: list[str] = []
        size, specials = tokenizer.vocab_size, tokenizer.special_ids if skip_special_tokens else frozenset()
        self._silent = lambda i: not 0 <= i < size or i in specials

    @property
    def text(self) -> str:
        """Everything returned so far."""
        return "".join(self._parts)

    def push(self, ids: int | Iterable[int]) -> str:
        """Add generated ids; return the text that became final ("" if none)."""
        silent, before = self._silent, len(self.ids)
        if isinstance(ids, int):
            if not silent(ids):
                self.ids.append(ids)
        else:
            self.ids.extend(i for i in map(int, ids) if not silent(i))
        if len(self.ids) == before:  # the window is unchanged, so is its verdict: nothing new
            return ""
        prefix_text, new_text = self._window()
        if len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._advance(new_text[len(prefix_text) :])

    def flush(self) -> str:
        """Return whatever was held back (call once the sequence is finished)."""
        prefix_text, new_text = self._window()
        if len(new_text) <= len(prefix_text):
            return ""
        return self._advance(new_text[len(prefix_text) :])

    def _window(self) -> tuple[str, str]:
        decode = self.tokenizer.decode
        window = self.ids[self._prefix_offset :]
        prefix_text = decode(window[: self._read_offset - self._prefix_offset], self.skip_special_tokens)
        return prefix_text, decode(window, self.skip_special_tokens)

    def _advance(self, delta: str) -> str:
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        self._parts.append(delta)
        return delta
