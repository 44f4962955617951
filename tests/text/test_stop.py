"""Stop strings and incremental text, on real ids of a byte-level toy decoder (no model needed)."""

from __future__ import annotations

import pytest

from tnllm.text.stop import StopStrings, TextStream


class ByteTokenizer:
    """Each id is one UTF-8 byte: incomplete characters decode to U+FFFD like sentencepiece byte pieces."""

    vocab_size = 256
    special_ids: frozenset[int] = frozenset()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def stream_all(text: str, stops: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    ts = TextStream(ByteTokenizer(), stops)
    deltas = []
    for b in text.encode():
        deltas.append(ts.push([b]))
        if ts.stopped:
            break
    else:
        deltas.append(ts.finish())
    return deltas, ts


@pytest.mark.parametrize("text", ["你好，世界", "emoji 😀👍🏽 done", "plain ascii"])
def test_multibyte_characters_are_never_split(text: str) -> None:
    deltas, _ = stream_all(text)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    # a 3-byte character appears in one delta, at the push of its last byte
    if "你" in text:
        assert "你" in deltas


@pytest.mark.parametrize(
    ("text", "stops", "want"),
    [
        ("hello STOP world", ("STOP",), "hello "),
        ("abc<|end|>def", ("<|end|>", "zzz"), "abc"),
        ("no stop here", ("STOP",), "no stop here"),
        ("ends with a partial ST", ("STOP",), "ends with a partial ST"),  # released at the end
        ("你好吗？我很好", ("吗？",), "你好"),
        ("xxSTSTOPyy", ("STOP",), "xxST"),
    ],
)
def test_stop_string_never_emitted_even_in_part(text: str, stops: tuple[str, ...], want: str) -> None:
    deltas, ts = stream_all(text, stops)
    assert "".join(deltas) == want
    assert ts.stopped == (want != text)
    # no intermediate state ever showed the start of the stop string beyond what is finally kept
    shown = ""
    for d in deltas:
        shown += d
        assert want.startswith(shown)


def test_earliest_of_several_stop_strings_wins() -> None:
    s = StopStrings(["world", "lo w"])
    out = s.feed("hello world")
    assert out == "hel" and s.hit
