"""Train the demo checkpoints' sentencepiece tokenizer on the corpus shipped in ``tnllm/model/data``.

Torch-free. The trained model mirrors the official (Baichuan-style) tokenizer's settings where it
matters for serving: BPE, byte fallback (any text round-trips), digits split, identity
normalisation (code whitespace survives), sentencepiece's dummy-prefix space, and the special ids
unk 0, bos 1, eos 2. Sentencepiece cannot give two pieces the same id, so there is no pad piece
(``pad_id=-1``), exactly like the official tokenizer (its ``pad_token`` is None); the model config
still says ``pad_token_id: 0`` as the released configs do.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import sentencepiece as spm

CORPUS_RESOURCE = "demo_corpus.txt"
# vocab size -> character coverage: the tiny vocabulary cannot hold every character of the corpus,
# the rest falls back to byte pieces (which is the point: it exercises byte fallback).
_COVERAGE = {1024: 0.99, 4096: 0.9995}


def corpus_lines() -> list[str]:
    """The non-empty lines of the shipped demo corpus (Chinese, English, code, emoji)."""
    text = resources.files("tnllm.model.data").joinpath(CORPUS_RESOURCE).read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line.strip()]


def train_sentencepiece(vocab_size: int) -> bytes:
    """Serialized sentencepiece model trained on the demo corpus (deterministic: one thread, no sampling)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=_COVERAGE.get(vocab_size, 0.9995),
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return out.getvalue()


def _added_token(content: str) -> dict[str, Any]:
    # the AddedToken form transformers writes (and the official files use)
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def write_tokenizer_files(out_dir: str | Path, vocab_size: int) -> int:
    """Write tokenizer.model, tokenizer_config.json and special_tokens_map.json; return the piece count."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    proto = train_sentencepiece(vocab_size)
    (out / "tokenizer.model").write_bytes(proto)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    # Same keys and values as the released 7B tokenizer_config.json, except the class: no tokenizer
    # code ships in the folder (we never run checkpoint code), so point HF at its own Llama class.
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        **{k: _added_token(v) for k, v in specials.items()},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    token_map = {k: {f: x for f, x in _added_token(v).items() if f != "__type"} for k, v in specials.items()}
    (out / "special_tokens_map.json").write_text(json.dumps(token_map, indent=2) + "\n", encoding="utf-8")
    sp = spm.SentencePieceProcessor(model_proto=proto)
    return int(sp.get_piece_size())
