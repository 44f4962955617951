"""Tokenizer: official BaiChuanTokenizer behaviour, round trips, chat template, incremental decoding."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from tnllm.config import Settings
from tnllm.errors import TokenizerError
from tnllm.protocol.jobs import ChatMessage, GenerationParams
from tnllm.text.chat import DEFAULT_CHAT_TEMPLATE
from tnllm.text.detok import IncrementalDecoder
from tnllm.text.prompt import render_prompt, render_prompt_text
from tnllm.text.tokenizer import Tokenizer, load_tokenizer

SYSTEM = Settings().system_prompt

ROUND_TRIP_TEXTS = [
    "你好",
    "你好，世界！今天天气很好。",
    "Hello, world!",
    "emoji 😀 family 👨‍👩‍👧‍👦 flag 🇨🇳 heart ❤️ done",
    "def f(x):\n\treturn  x   + 1\n\n\n    # 四个空格\n",
    "  leading and trailing spaces  ",
    "\nstarts with a newline",
    "rare characters: 龘 𠮷 ꙮ and control \x01 bytes",
    "mixed 中文 English 123 4.56 ＡＢＣ",
    "",
]


@pytest.fixture(scope="module")
def tok(demo_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(demo_tokenizer_dir)


@pytest.fixture()
def folder(demo_tokenizer_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tokenizer folder that a test may edit."""
    out = tmp_path / "tok"
    shutil.copytree(demo_tokenizer_dir, out)
    return out


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


# ---- encode / decode -------------------------------------------------------------------------
@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip_is_exact(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_byte_fallback_covers_characters_outside_the_vocabulary(tok: Tokenizer) -> None:
    ids = tok.encode("龘")
    pieces = [tok.id_to_piece(i) for i in ids]
    assert [p for p in pieces if p.startswith("<0x")] == ["<0xE9>", "<0xBE>", "<0x98>"]
    assert tok.unk_id not in ids


def test_plain_text_is_sentencepiece_encode_with_dummy_prefix(
    tok: Tokenizer, demo_tokenizer_dir: Path
) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(demo_tokenizer_dir / "tokenizer.model"))
    for text in ROUND_TRIP_TEXTS:
        assert tok.encode(text) == sp.encode(text)
    # the dummy prefix: "x" alone and " x" inside a text give the same first piece
    assert tok.id_to_piece(tok.encode("hello")[0]).startswith("▁")


def test_special_ids_and_no_bos_eos_added(tok: Tokenizer) -> None:
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
    assert tok.vocab_size == 1024
    ids = tok.encode("hello")
    assert tok.bos_id not in ids and tok.eos_id not in ids


def test_literal_special_tokens_map_to_their_ids(tok: Tokenizer) -> None:
    assert tok.encode("<s>") == [1]
    assert tok.encode("</s>") == [2]
    assert tok.encode("<unk>") == [0]
    # each stretch around a special token is encoded on its own (with its own dummy prefix)
    assert tok.encode("a</s>b") == [*tok.encode("a"), 2, *tok.encode("b")]
    assert tok.encode("<s>你好</s>") == [1, *tok.encode("你好"), 2]
    # a broken special token is plain text
    assert 1 not in tok.encode("<s >") and 2 not in tok.encode("</ s>")


def test_decode_skips_special_tokens_by_default(tok: Tokenizer) -> None:
    ids = tok.encode("<s>hello</s>")
    assert tok.decode(ids) == "hello"
    assert tok.decode(ids, skip_special_tokens=False) == "<s>hello</s>"
    assert tok.decode([tok.unk_id, *tok.encode("x")]) == "x"


def test_decode_drops_ids_outside_the_vocabulary(tok: Tokenizer) -> None:
    assert tok.decode([*tok.encode("ok"), tok.vocab_size, -1, 10**9]) == "ok"


def test_add_bos_and_eos_follow_tokenizer_config(folder: Path) -> None:
    _edit_config(folder, add_bos_token=True, add_eos_token=True)
    tok = Tokenizer.from_pretrained(folder)
    assert tok.encode("hi") == [1, *tok.encode("hi", add_special_tokens=False), 2]
    assert tok.decode(tok.encode("hi")) == "hi"


def test_official_class_defaults_apply_without_tokenizer_config(folder: Path) -> None:
    (folder / "tokenizer_config.json").unlink()
    (folder / "special_tokens_map.json").unlink()
    tok = Tokenizer.from_pretrained(folder)
    # BaiChuanTokenizer's own defaults: add_bos_token=True, add_eos_token=False
    assert tok.encode("hi")[0] == tok.bos_id and tok.encode("hi")[-1] != tok.eos_id
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)


def test_additional_special_tokens_from_the_map(folder: Path) -> None:
    path = folder / "special_tokens_map.json"
    token_map = json.loads(path.read_text())
    token_map["additional_special_tokens"] = ["<0x0A>"]  # an existing piece, used as a special string
    path.write_text(json.dumps(token_map))
    tok = Tokenizer.from_pretrained(folder)
    newline_id = tok.special_token_ids["<0x0A>"]
    assert tok.encode("a<0x0A>b") == [*tok.encode("a"), newline_id, *tok.encode("b")]


def test_matches_transformers_slow_sentencepiece_tokenizer(tok: Tokenizer, demo_tokenizer_dir: Path) -> None:
    """Ids equal those of transformers' slow (legacy) sentencepiece tokenizer on the same model file."""
    backend = pytest.importorskip("transformers.tokenization_utils_sentencepiece")
    hf = backend.SentencePieceBackend(
        vocab_file=str(demo_tokenizer_dir / "tokenizer.model"),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        legacy=True,
    )
    texts = [
        *ROUND_TRIP_TEXTS,
        "a</s>b",
        "<s>hello <unk> world</s>",
        " x  <s>  y ",
        "</s></s><s>",
        "<|im_start|>user\n你好<|im_end|>\n",
    ]
    for text in texts:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text


def test_special_tokens_marked_lstrip_rstrip_swallow_whitespace(folder: Path) -> None:
    """AddedToken lstrip/rstrip in special_tokens_map.json (transformers' slow-tokenizer rule)."""
    path = folder / "special_tokens_map.json"
    token_map = json.loads(path.read_text())
    token_map["eos_token"].update(lstrip=True, rstrip=True)
    token_map["bos_token"].update(rstrip=True)
    path.write_text(json.dumps(token_map))
    tok = Tokenizer.from_pretrained(folder)
    sp = tok.sp.encode
    assert tok.encode("a  </s>  b") == [*sp("a"), 2, *sp("b")]
    assert tok.encode(" <s>  x </s>\n") == [*sp(" "), 1, *sp("x"), 2]
    assert tok.encode("x <unk> y") == [*sp("x "), 0, *sp(" y")]  # <unk> strips nothing
    assert tok.encode("</s> </s>  <s> z") == [2, 2, 1, *sp("z")]


def test_missing_or_broken_files_are_clear_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"no tokenizer\.model"):
        Tokenizer.from_pretrained(tmp_path / "nothing")
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"tokenizer_config\.json"):
        Tokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        Tokenizer.from_pretrained(folder)


def test_load_tokenizer_none_without_tokenizer_model(tmp_path: Path, demo_tokenizer_dir: Path) -> None:
    assert load_tokenizer(tmp_path) is None
    assert isinstance(load_tokenizer(demo_tokenizer_dir), Tokenizer)


# ---- chat template ---------------------------------------------------------------------------
def test_default_chat_template_is_the_tutorial_chatml_prompt(tok: Tokenizer) -> None:
    prompt = render_prompt_text(tok, GenerationParams(prompt="你好"), SYSTEM)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE


def test_chat_template_keeps_given_system_and_history(tok: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    job = GenerationParams(messages=[ChatMessage.model_validate(m) for m in messages])
    prompt = render_prompt_text(tok, job, SYSTEM).removesuffix("<|im_start|>assistant\n")
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n"
    )
    assert "helpful assistant" not in prompt


def test_system_prompt_setting_and_disabling(tok: Tokenizer) -> None:
    """The default system message is render_prompt's (the tokenizer renders exactly what it gets)."""
    job = GenerationParams(prompt="x")
    assert render_prompt_text(tok, job, "Answer in French.").startswith(
        "<|im_start|>system\nAnswer in French.<|im_end|>\n"
    )
    for none in ("", None):
        assert render_prompt_text(tok, job, none).startswith("<|im_start|>user\n")
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]).startswith("<|im_start|>user\n")
    chat = GenerationParams(messages=[ChatMessage(role="user", content="x")])
    assert render_prompt(tok, chat, SYSTEM) == render_prompt(tok, job, SYSTEM)
    assert render_prompt(tok, job, SYSTEM) == tok.encode(render_prompt_text(tok, job, SYSTEM))


def test_chat_template_from_tokenizer_config(folder: Path) -> None:
    _edit_config(folder, chat_template="{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    tok = Tokenizer.from_pretrained(folder)
    assert tok.apply_chat_template([{"role": "user", "content": "q"}]) == "[user] q\n"


def test_chat_template_file_wins_over_config_and_setting_wins_over_both(folder: Path) -> None:
    _edit_config(folder, chat_template="config:{{ messages[-1].content }}")
    (folder / "chat_template.jinja").write_text("file:{{ messages[-1].content }}\n")
    msgs = [{"role": "user", "content": "q"}]
    assert Tokenizer.from_pretrained(folder).apply_chat_template(msgs) == "file:q"
    settings = Settings(chat_template="setting:{{ bos_token }}{{ messages[-1].content }}")
    tok = load_tokenizer(folder, settings)
    assert tok is not None
    assert tok.apply_chat_template(msgs) == "setting:<s>q"


def test_chat_template_list_form_in_config(folder: Path) -> None:
    _edit_config(folder, chat_template=[{"name": "default", "template": "D{{ messages|length }}"}])
    assert Tokenizer.from_pretrained(folder).apply_chat_template([{"role": "user", "content": "q"}]) == "D1"


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "must not be empty"),
        ("hello", "must be a list"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\].role must be one of"),
        ([{"role": "user", "content": 5}], r"messages\[0\].content must be a string"),
        ([{"role": "user", "content": "x"}, "oops"], r"messages\[1\] must be an object"),
    ],
)
def test_bad_messages_are_value_errors(tok: Tokenizer, messages: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tok.apply_chat_template(messages)  # type: ignore[arg-type]


def test_bad_and_unsafe_templates_are_clear_errors(demo_tokenizer_dir: Path) -> None:
    msgs = [{"role": "user", "content": "q"}]
    with pytest.raises(TokenizerError, match="invalid chat template"):
        Tokenizer.from_pretrained(demo_tokenizer_dir, chat_template="{% for %}").apply_chat_template(msgs)
    unsafe = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(TokenizerError, match="chat template failed"):
        Tokenizer.from_pretrained(demo_tokenizer_dir, chat_template=unsafe).apply_chat_template(msgs)
    raising = "{{ raise_exception('only user turns') }}"
    with pytest.raises(TokenizerError, match="only user turns"):
        Tokenizer.from_pretrained(demo_tokenizer_dir, chat_template=raising).apply_chat_template(msgs)


# ---- incremental decoding --------------------------------------------------------------------
def test_incremental_decoder_holds_back_split_multibyte_characters(tok: Tokenizer) -> None:
    ids = tok.encode("A龘😀B")
    dec = IncrementalDecoder(tok)
    deltas = [dec.push(i) for i in ids]
    pieces = [tok.id_to_piece(i) for i in ids]
    # while the bytes of a character are incomplete nothing is emitted; the last byte emits it whole
    for piece, delta in zip(pieces, deltas, strict=True):
        assert "\ufffd" not in delta
        if piece in ("<0xE9>", "<0xBE>"):
            assert delta == ""
    assert "龘" in deltas and "😀" in deltas
    assert "".join(deltas) + dec.flush() == "A龘😀B" == dec.text


def test_incremental_decoder_flush_releases_an_incomplete_tail(tok: Tokenizer) -> None:
    dec = IncrementalDecoder(tok)
    first = dec.push(tok.encode("ok"))
    assert first == "ok"
    assert dec.push(tok.sp.piece_to_id("<0xE9>")) == ""
    assert dec.flush() == "\ufffd"
    assert dec.text == tok.decode(dec.ids)


def test_incremental_decoder_keeps_spaces_between_pieces(tok: Tokenizer) -> None:
    text = "a  b   c\n\td  你好 世界 "
    dec = IncrementalDecoder(tok)
    out = "".join(dec.push(i) for i in tok.encode(text)) + dec.flush()
    assert out == text


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_decoder_equals_full_decode_on_random_ids(tok: Tokenizer, skip: bool) -> None:
    """Random ids (bytes, spaces, specials, unknown ids) as a random model emits them."""
    rng = random.Random(1234)
    byte_ids = [tok.sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
    space_ids = [i for i in range(tok.vocab_size) if tok.id_to_piece(i).startswith("▁")]
    for _ in range(300):
        ids = []
        for _ in range(rng.randint(1, 40)):
            r = rng.random()
            pool = byte_ids if r < 0.4 else space_ids if r < 0.6 else None
            ids.append(rng.choice(pool) if pool else rng.randrange(0, tok.vocab_size if r < 0.97 else 3))
        dec = IncrementalDecoder(tok, skip_special_tokens=skip)
        text = ""
        for i in ids:
            delta = dec.push(i)
            text += delta
            assert tok.decode(dec.ids, skip).startswith(text)
        text += dec.flush()
        assert text == tok.decode(ids, skip) == dec.text


def test_tokenization_does_not_import_torch() -> None:
    code = (
        "import sys, tnllm.text.tokenizer, tnllm.text.chat, tnllm.text.detok, tnllm.text.prompt\n"
        "import tnllm.model.demo_tokenizer\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_incremental_decoder_window_ignores_ids_without_text(tok: Tokenizer) -> None:
    """Ids decode drops (outside the vocabulary, skipped specials) neither reach the decoded window nor
    stop the text: a random model's long run of them must not make each push decode a longer list."""
    windows: list[int] = []

    class Counting(Tokenizer):
        def decode(self, ids, skip_special_tokens=True):  # type: ignore[no-untyped-def]
            ids = list(ids)
            windows.append(len(ids))
            return super().decode(ids, skip_special_tokens)

    counting = Counting(tok.sp, special_tokens=tok.special_tokens)
    dec = IncrementalDecoder(counting)
    silent = [tok.vocab_size + 7, -1, tok.eos_id, 10**9] * 150
    pieces = tok.encode("hello world, again")
    text = "".join(dec.push(i) for i in pieces[:2])
    text += "".join(dec.push(i) for i in silent)
    text += "".join(dec.push(i) for i in pieces[2:]) + dec.flush()
    assert text == "hello world, again" == tok.decode(pieces + silent)
    assert max(windows) <= 4, max(windows)
    assert dec.ids == pieces
