"""`tnllm generate`: every prompt through one engine; greedy ids match the official golden numbers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.model import TINY_A
from tnllm.cli.main import main
from tnllm.cli.supervisor import tnllm_argv
from tnllm.config import Settings
from tnllm.protocol.jobs import GenerationParams
from tnllm.text.prompt import render_prompt


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    assert main(["generate", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_prompt_ids_together_reproduce_the_official_greedy_continuations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = json.loads((TINY_A / "expected.json").read_text())["sequences"]
    argv = ["--model", str(TINY_A), "--max-new-tokens", "20", "--temperature", "0", "--ignore-eos", "--json"]
    for seq in expected:
        argv += ["--prompt-ids", ",".join(map(str, seq["input_ids"]))]
    out = run_cli(capsys, *argv)
    assert [o["prompt_ids"] for o in out] == [s["input_ids"] for s in expected]
    assert [o["ids"] for o in out] == [s["greedy"]["new_tokens"] for s in expected]
    assert all("text" not in o for o in out)  # tiny-a ships no tokenizer


def test_text_prompt_uses_the_chat_template(capsys: pytest.CaptureFixture[str], demo_model_dir: Path) -> None:
    from tnllm.text.tokenizer import load_tokenizer

    tok = load_tokenizer(demo_model_dir)
    assert tok is not None
    base = ["--model", str(demo_model_dir), "--max-new-tokens", "6", "--ignore-eos", "--json"]
    chat, raw = (
        run_cli(capsys, *base, "--prompt", "你好"),
        run_cli(capsys, *base, "--raw", "--prompt", "你好"),
    )
    # the worker's rendering (render_prompt, default system message included)
    templated = render_prompt(tok, GenerationParams(prompt="你好"), Settings().system_prompt)
    assert chat[0]["prompt_ids"] == templated and raw[0]["prompt_ids"] == tok.encode("你好")
    assert tok.decode(templated).startswith("<|im_start|>system\nYou are a helpful assistant.")
    for o in (chat[0], raw[0]):
        assert len(o["ids"]) == 6 and o["text"] == tok.decode(o["ids"])


def test_over_the_context_limit_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TNLLM_MAX_CONTEXT", "10")
    assert main(["generate", "--model", str(TINY_A), "--prompt-ids", "1,2,3", "--max-new-tokens", "8"]) == 2
    assert "exceeds the context limit of 10 tokens" in capsys.readouterr().err


def test_stop_strings_and_repetition_penalty(
    capsys: pytest.CaptureFixture[str], demo_model_dir: Path
) -> None:
    base = [
        "--model",
        str(demo_model_dir),
        "--max-new-tokens",
        "24",
        "--ignore-eos",
        "--json",
        "--prompt",
        "hi",
    ]
    plain = run_cli(capsys, *base)[0]
    assert plain["finish_reason"] == "length" and len(plain["text"]) > 4
    stop = plain["text"][len(plain["text"]) // 2 :][:2]
    cut = run_cli(capsys, *base, "--stop", "\x00never", "--stop", stop)[0]
    assert cut["finish_reason"] == "stop"
    assert plain["text"].startswith(cut["text"]) and stop not in cut["text"]
    assert plain["text"].find(stop) == len(cut["text"])
    # the random demo model starts repeating itself after ~26 tokens; the penalty holds that off
    longer = [a if a != "24" else "60" for a in base]

    def repeats(o: dict) -> int:
        return sum(t in o["prompt_ids"] or t in o["ids"][:i] for i, t in enumerate(o["ids"]))

    free, penalised = run_cli(capsys, *longer)[0], run_cli(capsys, *longer, "--repetition-penalty", "1.3")[0]
    assert repeats(penalised) < repeats(free)
    assert main(["generate", *base, "--repetition-penalty", "0"]) == 2
    assert "repetition_penalty: Input should be greater than 0" in capsys.readouterr().err


def test_out_of_range_flags_are_refused_as_the_api_words_it(capsys: pytest.CaptureFixture[str]) -> None:
    """The flags build the one SamplingParams: its range checks, the API's wording, before any load."""
    argv = ["generate", "--model", str(TINY_A), "--prompt-ids", "1,2,3"]
    assert main([*argv, "--temperature", "6"]) == 2
    assert "tnllm generate: temperature: Input should be less than or equal to 5" in capsys.readouterr().err
    assert main([*argv, "--stop", ""]) == 2
    assert "tnllm generate: stop: stop[0] must not be empty" in capsys.readouterr().err
    assert main([*argv, "--max-new-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "tnllm generate: max_new_tokens: Input should be greater than or equal to 1\n"


def test_an_empty_prompt_is_refused_as_the_api_refuses_it(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in ([], ["--raw"]):
        assert main(["generate", "--model", str(TINY_A), *extra, "--prompt", "ok", "--prompt", ""]) == 2
        assert capsys.readouterr().err == "tnllm generate: prompt: String should have at least 1 character\n"
    assert main(["generate", "--model", str(TINY_A), "--prompt-ids", ""]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


def test_a_model_that_cannot_be_used_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing folder (as a real process: no traceback), a file, a folder without a checkpoint."""
    argv = tnllm_argv("generate", "--model", "/nonexistent", "--prompt", "hi")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "model folder '/nonexistent' does not exist; run `tnllm generate --model demo`" in proc.stderr
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for model, words in [("file", "is a file; give the checkpoint folder"), ("empty", "no config.json")]:
        assert main(["generate", "--model", str(tmp_path / model), "--prompt", "hi"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("tnllm generate: ") and words in err and len(err.splitlines()) == 1


def test_the_demo_model_is_written_into_the_data_dir(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not into the current folder: where TNLLM_DATA_DIR says, and the command says so once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TNLLM_DATA_DIR", str(tmp_path / "data"))
    argv = ["generate", "--model", "demo", "--prompt", "hi", "--max-new-tokens", "2", "--json"]
    assert main(argv) == 0
    where = tmp_path / "data" / "demo-model"
    said = f"tnllm generate: writing the demo checkpoint to {where} (in TNLLM_DATA_DIR)\n"
    assert capsys.readouterr().err == said
    assert (where / "config.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert main(argv) == 0 and capsys.readouterr().err == ""  # written once


def test_the_sampling_flags_are_the_contract() -> None:
    """Every SamplingParams field is a flag; absent flags give the contract's own defaults, given
    ones reach the contract unchanged (no second copy of names or defaults in the CLI)."""
    from tnllm.cli.generate import sampling_from_args
    from tnllm.cli.main import build_parser
    from tnllm.protocol.sampling import SamplingParams

    bare = build_parser().parse_args(["generate", "--prompt", "x"])
    assert sampling_from_args(bare, 7) == SamplingParams(max_new_tokens=7)
    argv = ["generate", "--prompt", "x", "--max-new-tokens", "3", "--temperature", "0.5", "--top-p", "0.9"]
    argv += ["--top-k", "4", "--repetition-penalty", "1.2", "--stop", "a", "--stop", "b", "--seed", "5"]
    given = sampling_from_args(build_parser().parse_args([*argv, "--ignore-eos"]), 7)
    assert given == SamplingParams(
        max_new_tokens=3, temperature=0.5, top_p=0.9, top_k=4, repetition_penalty=1.2,
        stop=("a", "b"), seed=5, ignore_eos=True,
    )  # fmt: skip
    assert set(SamplingParams.model_fields) <= set(vars(build_parser().parse_args(argv)))


def test_the_new_flags_take_numbers_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    """n, penalties, logprobs, and the dict/model fields as JSON; n > 1 prints every choice."""
    from tnllm.cli.generate import sampling_from_args
    from tnllm.cli.main import build_parser
    from tnllm.protocol.sampling import SamplingParams

    argv = ["generate", "--prompt-ids", "1,2,3", "--model", str(TINY_A), "--n", "2", "--logprobs"]
    argv += ["--top-logprobs", "2", "--frequency-penalty", "0.5", "--logit-bias", '{"5": 1.5}']
    argv += ["--response-format", '{"type": "json_object"}', "--max-new-tokens", "3"]
    got = sampling_from_args(build_parser().parse_args(argv), 7)
    assert got == SamplingParams.model_validate(
        {"max_new_tokens": 3, "n": 2, "logprobs": True, "top_logprobs": 2, "frequency_penalty": 0.5,
         "logit_bias": {"5": 1.5}, "response_format": {"type": "json_object"}}
    )  # fmt: skip
    plain = [a for a in argv if a not in ("--response-format", '{"type": "json_object"}')]
    assert main([*plain, "--json", "--temperature", "1", "--seed", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    assert [c["index"] for c in out["choices"]] == [0, 1] and out["choices"][0]["ids"] == out["ids"]
