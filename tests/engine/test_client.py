"""The engine in its own process: a real child process on the tiny demo checkpoint (CPU, fp32).

Its results must be the in-process engine's, token for token; its refusals the same; its death must
end every running request with EngineLost and tell the worker; and it must never outlive its worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tnllm.config import EngineConfig, Settings
from tnllm.engine.client import make_engine_client
from tnllm.engine.inproc_client import InprocEngineClient
from tnllm.engine.proc_client import ProcessEngineClient
from tnllm.engine.types import EngineRequest, SamplingParams, TokenEvent
from tnllm.engine.wire import (
    config_from_wire,
    config_to_wire,
    decode,
    encode,
    request_from_wire,
    request_to_wire,
    result_from_wire,
    result_to_wire,
)
from tnllm.errors import EngineError, EngineLoadFailed, EngineLost, RequestRejected

SLOTS = 4


@pytest.fixture(autouse=True)
def one_thread_children(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine processes inherit the environment: one OpenMP thread each on a shared 2-core machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def engine_settings(model: Path, tmp: Path, **over: Any) -> Settings:
    return Settings(
        model=str(model), device="cpu", engine_slots=SLOTS, max_context=256, data_dir=str(tmp), **over
    )


def engine_config(model: Path, tmp: Path, **over: Any) -> EngineConfig:
    return engine_settings(model, tmp, **over).engine_config()


@pytest.fixture
def client(demo_model_dir: Path, tmp_path: Path) -> Iterator[ProcessEngineClient]:
    lost: list[int | None] = []
    engine = ProcessEngineClient(engine_config(demo_model_dir, tmp_path), on_lost=lost.append)
    engine.start()
    engine.lost_codes = lost  # type: ignore[attr-defined]
    yield engine
    engine.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def requests(tokenizer: Any, stop: str) -> list[EngineRequest]:
    """Greedy, seeded sampling, a stop string, a repetition penalty, an EOS-honouring one."""
    ids = tokenizer.encode
    return [
        EngineRequest("greedy", ids("hello world"), SamplingParams(max_new_tokens=24, ignore_eos=True)),
        EngineRequest(
            "sampled",
            ids("linear attention"),
            SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.9, top_k=50, seed=7, ignore_eos=True),
        ),
        EngineRequest("stop", ids("a b c"), SamplingParams(max_new_tokens=40, stop=(stop,), ignore_eos=True)),
        EngineRequest("penalty", ids("x"), SamplingParams(max_new_tokens=16, repetition_penalty=1.3)),
        EngineRequest("eos", [5, 6], SamplingParams(max_new_tokens=30, temperature=5.0, seed=3)),
    ]


def test_results_match_the_in_process_engine(
    client: ProcessEngineClient, demo_model_dir: Path, tmp_path: Path
) -> None:
    from tnllm.engine.factory import build_engine

    local = build_engine(engine_config(demo_model_dir, tmp_path))
    plain = EngineRequest(
        "plain", local.tokenizer.encode("a b c"), SamplingParams(max_new_tokens=40, ignore_eos=True)
    )
    stop = local.generate([plain])[0].text[6:8]  # text that the "stop" request will produce
    expected = {r.request_id: r for r in local.generate(requests(local.tokenizer, stop))}

    deltas: dict[str, list[TokenEvent]] = {}
    done: list[str] = []
    handles = [
        client.submit(req, on_token=lambda ev: deltas.setdefault(ev.request_id, []).append(ev),
                      on_done=lambda h: done.append(h.request_id))
        for req in requests(client.tokenizer, stop)
    ]  # fmt: skip
    results = {h.request_id: h.result(timeout=60) for h in handles}
    assert results == expected
    assert {r.finish_reason for r in results.values()} >= {"length", "stop"}
    for rid, result in results.items():  # the stream is the result, delta by delta, in order
        assert "".join(ev.text for ev in deltas[rid]) == result.text
        assert [t for ev in deltas[rid] for t in ev.token_ids] == result.token_ids
    assert sorted(done) == sorted(expected)


def test_refusals_are_the_engines_and_come_at_once(client: ProcessEngineClient) -> None:
    with pytest.raises(RequestRejected, match="context limit of 256"):
        client.submit(EngineRequest("long", list(range(3, 200)), SamplingParams(max_new_tokens=100)))
    with pytest.raises(RequestRejected, match="empty"):
        client.submit(EngineRequest("empty", [], SamplingParams()))
    with pytest.raises(RequestRejected, match="vocabulary"):
        client.submit(EngineRequest("oov", [10**7], SamplingParams()))
    with pytest.raises(RequestRejected, match=r"^top_p: Input should be greater than 0$"):
        client.submit(EngineRequest.from_json("p", [5], {"max_new_tokens": 4, "top_p": 0.0}))
    with pytest.raises(RequestRejected, match=r"^max_new_tokens: must be resolved"):
        client.submit(EngineRequest("unresolved", [5], SamplingParams()))
    slow = client.submit(EngineRequest("dup", [5], SamplingParams(max_new_tokens=200, ignore_eos=True)))
    with pytest.raises(RequestRejected, match="already running"):
        client.submit(EngineRequest("dup", [6], SamplingParams(max_new_tokens=2)))
    slow.cancel()
    assert slow.result(timeout=30).finish_reason == "cancelled"
    # once finished, the id may be used again
    assert (
        client.submit(EngineRequest("dup", [6], SamplingParams(max_new_tokens=2)))
        .result(30)
        .completion_tokens
    )


def test_cancel_keeps_the_partial_text_and_stats_arrive(client: ProcessEngineClient) -> None:
    seen = threading.Event()
    handle = client.submit(
        EngineRequest("c", [5, 6, 7], SamplingParams(max_new_tokens=200, ignore_eos=True)),
        on_token=lambda ev: seen.set(),
    )
    assert seen.wait(30)
    client.cancel("c")
    result = handle.result(timeout=30)
    assert result.finish_reason == "cancelled" and 0 < result.completion_tokens < 200
    client.cancel("c")  # a finished request: nothing happens
    deadline = time.monotonic() + 10
    while client.stats().finished_requests < 1:  # reported every STATS_INTERVAL_S
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stats = client.stats()
    assert stats.slots == SLOTS and stats.generated_tokens >= result.completion_tokens and stats.active == 0
    assert client.gpu_memory() is None  # CPU


def test_sigterm_and_sigint_do_not_stop_the_engine_process(client: ProcessEngineClient) -> None:
    """A terminal's Ctrl-C or a group SIGTERM must not end generation under a warm shutdown."""
    assert client.pid is not None
    os.kill(client.pid, signal.SIGTERM)
    os.kill(client.pid, signal.SIGINT)
    time.sleep(0.3)
    result = client.submit(
        EngineRequest("after", [5], SamplingParams(max_new_tokens=3, ignore_eos=True))
    ).result(30)
    assert result.completion_tokens == 3


def test_death_ends_running_requests_with_engine_lost(client: ProcessEngineClient) -> None:
    started = threading.Event()
    handle = client.submit(
        EngineRequest("long", [5, 6], SamplingParams(max_new_tokens=250, ignore_eos=True)),
        on_token=lambda ev: started.set(),
    )
    assert started.wait(30) and client.pid is not None
    os.kill(client.pid, signal.SIGKILL)
    with pytest.raises(EngineLost, match="exited unexpectedly"):
        handle.result(timeout=30)
    assert client.lost_codes == [-signal.SIGKILL]  # type: ignore[attr-defined]
    with pytest.raises(EngineLost):
        client.submit(EngineRequest("next", [5], SamplingParams(max_new_tokens=2)))


def test_stop_fails_what_still_runs(demo_model_dir: Path, tmp_path: Path) -> None:
    lost: list[int | None] = []
    engine = ProcessEngineClient(engine_config(demo_model_dir, tmp_path), on_lost=lost.append)
    engine.start()
    pid = engine.pid
    assert pid is not None
    handle = engine.submit(EngineRequest("r", [5], SamplingParams(max_new_tokens=250, ignore_eos=True)))
    engine.stop()
    with pytest.raises(EngineError, match="stopped") as err:
        handle.result(timeout=5)
    assert not isinstance(err.value, EngineLost) and lost == []  # a stop is not a loss
    assert wait_gone(pid)
    with pytest.raises(EngineError, match="stopping"):
        engine.submit(EngineRequest("r2", [5], SamplingParams(max_new_tokens=2)))


def test_a_model_that_cannot_load_names_the_problem(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    engine = ProcessEngineClient(engine_config(empty, tmp_path / "data"))
    with pytest.raises(EngineLoadFailed, match=r"config\.json"):
        engine.start()
    assert engine.pid is not None and not alive(engine.pid)


def test_the_engine_process_never_outlives_its_worker(demo_model_dir: Path, tmp_path: Path) -> None:
    """A worker SIGKILLed (OOM killer) closes the socket: its engine process exits by itself."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from tnllm.config import Settings
        from tnllm.engine.proc_client import ProcessEngineClient
        from tnllm.engine.types import EngineRequest, SamplingParams
        client = ProcessEngineClient(Settings(model={str(demo_model_dir)!r}, device="cpu", engine_slots=2,
                                              data_dir={str(tmp_path)!r}).engine_config())
        client.start()
        client.submit(EngineRequest("r", [5], SamplingParams(max_new_tokens=100000 // 8, ignore_eos=True)))
        print(client.pid, flush=True)
        time.sleep(600)
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        pid = int(worker.stdout.readline())
        assert alive(pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert wait_gone(pid), "the engine process outlived its worker"
    finally:
        worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()


def test_wire_round_trips(tmp_path: Path) -> None:
    params = SamplingParams(
        max_new_tokens=7, temperature=0.5, top_p=0.8, top_k=4, repetition_penalty=1.2, stop=("a", "bc"),
        seed=9, ignore_eos=True,
    )  # fmt: skip
    req = EngineRequest("j:1", [1, 2, 3], params)
    assert request_from_wire(request_to_wire(req)) == req
    # the wire's params are the contract's JSON dump, validated again on the engine's side
    wire = decode(encode({"op": "submit", "request": request_to_wire(req)}))["request"]
    assert wire["params"] == params.model_dump(mode="json")
    assert request_from_wire(wire) == req and request_from_wire(wire).params == params
    with pytest.raises(RequestRejected, match=r"^temperature: Input should be less than or equal to 5$"):
        request_from_wire({**wire, "params": {**wire["params"], "temperature": 6}})
    with pytest.raises(RequestRejected, match=r"^bogus: Extra inputs are not permitted$"):
        request_from_wire({**wire, "params": {**wire["params"], "bogus": 1}})
    from tnllm.engine.types import EngineResult

    result = EngineResult("j:1", "text", [4, 5], "stop", 3, 2)
    assert result_from_wire(result_to_wire(result)) == result
    config = Settings(
        model="demo", engine_slots=7, state_dtype="bfloat16", data_dir=str(tmp_path), chat_template="{{ x }}",
    ).engine_config()  # fmt: skip
    assert config_from_wire(config_to_wire(config)) == config


def test_no_secret_crosses_the_engine_wire(tmp_path: Path) -> None:
    """The start frame carries the engine config only: no API key, webhook secret, Redis password."""
    secrets = ["api-key-1", "whsec-42", "redis-pw-7", "flower:pw-9"]
    settings = Settings(
        model="demo", data_dir=str(tmp_path), api_keys=[secrets[0]], webhook_secret=[secrets[1]],
        redis_url=f"redis://:{secrets[2]}@127.0.0.1:6379/0", flower_basic_auth=secrets[3],
    )  # fmt: skip
    frame = encode(ProcessEngineClient(settings.engine_config()).start_message()).decode()
    assert not [s for s in secrets if s in frame]
    sent = set(config_from_wire(__import__("json").loads(frame)["config"]).model_dump())
    assert sent == set(EngineConfig.model_fields)
    assert not sent & {"api_keys", "webhook_secret", "redis_url", "flower_basic_auth"}


def test_the_in_process_client_is_the_same_interface(demo_model_dir: Path, tmp_path: Path) -> None:
    """``engine_process=false``: the worker gets an ``InprocEngineClient`` with the same calls."""
    assert isinstance(make_engine_client(engine_settings(demo_model_dir, tmp_path)), ProcessEngineClient)
    client = make_engine_client(engine_settings(demo_model_dir, tmp_path, engine_process=False))
    assert isinstance(client, InprocEngineClient)
    with pytest.raises(EngineError, match="not started"):
        client.submit(EngineRequest("early", [5], SamplingParams(max_new_tokens=2)))
    client.start()
    try:
        assert client.slots == SLOTS and client.tokenizer is not None and client.gpu_memory() is None
        assert client.engine_info.device == "cpu" and client.engine_info.dtype == "float32"
        with pytest.raises(RequestRejected):
            client.submit(EngineRequest("long", [5] * 300, SamplingParams(max_new_tokens=2)))
        req = EngineRequest("r", [5, 6, 7], SamplingParams(max_new_tokens=6, ignore_eos=True))
        deltas: list[TokenEvent] = []
        result = client.submit(req, on_token=deltas.append).result(timeout=60)
        assert [t for ev in deltas for t in ev.token_ids] == result.token_ids and len(result.token_ids) == 6
        assert client.stats().finished_requests == 1
    finally:
        client.stop()
