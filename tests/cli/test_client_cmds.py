"""The client commands (`tnllm submit | jobs | status | wait | stream | cancel | chat`) against a real
stack: in-process through `main` for the outputs, as real processes for the one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures.services import Stack
from tnllm.cli.main import main
from tnllm.cli.supervisor import tnllm_argv
from tnllm.store.server import free_port

pytestmark = pytest.mark.slow


def run(capsys: pytest.CaptureFixture[str], stack: Stack, *argv: str) -> tuple[int, str, str]:
    """``tnllm ARGV --url <stack>``: (exit status, stdout, stderr)."""
    code = main([*argv, "--url", stack.api_url])
    out, err = capsys.readouterr()
    return code, out, err


def job_json(capsys: pytest.CaptureFixture[str], stack: Stack, job_id: str) -> dict:
    code, out, _ = run(capsys, stack, "status", job_id, "--json")
    assert code == 0
    return dict(json.loads(out))


def test_submit_then_status_wait_and_stream(capsys: pytest.CaptureFixture[str], client_stack: Stack) -> None:
    argv = ["submit", "Tell me a story", "--max-new-tokens", "9", "--seed", "3"]
    code, out, err = run(capsys, client_stack, *argv)
    job_id = out.strip()
    assert code == 0 and len(out.splitlines()) == 1 and f"tnllm stream {job_id}" in err
    code, out, err = run(capsys, client_stack, "wait", job_id)
    job = job_json(capsys, client_stack, job_id)
    assert code == 0 and job["status"] == "succeeded" and job["max_new_tokens"] == 9 and job["seed"] == 3
    assert out == job["result"]["text"] + "\n" and "succeeded" in err and "9 tokens" in err
    code, out, _ = run(capsys, client_stack, "stream", job_id)
    assert code == 0 and out == job["result"]["text"] + "\n"
    code, out, _ = run(capsys, client_stack, "status", job_id)
    assert out.splitlines()[0].startswith(f"{job_id} succeeded") and job["result"]["text"] in out


def test_submit_follows_the_job(capsys: pytest.CaptureFixture[str], client_stack: Stack) -> None:
    base = ["submit", "Hello", "--max-new-tokens", "12", "--ignore-eos", "--priority", "5"]
    code, out, _ = run(capsys, client_stack, *base, "--wait", "--json")
    waited = json.loads(out)
    assert code == 0 and waited["status"] == "succeeded" and waited["priority"] == 5
    code, out, err = run(capsys, client_stack, *base, "--stream")
    assert code == 0 and out.endswith("\n") and "✓ job" in err
    streamed_id = err.split("✓ job ")[1].split()[0]
    assert out == job_json(capsys, client_stack, streamed_id)["result"]["text"] + "\n"
    # the same greedy request gives the same text, whichever way it was followed
    assert out == waited["result"]["text"] + "\n"
    code, out, _ = run(capsys, client_stack, *base, "--stream", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and events[-1]["event"] == "done" and events[-1]["job"]["status"] == "succeeded"
    assert "".join(e["text"] for e in events if e["event"] == "token") == waited["result"]["text"]


def test_cancel(capsys: pytest.CaptureFixture[str], client_stack: Stack) -> None:
    slow = json.dumps({"tnllm_debug": {"delay": 30}})
    code, out, _ = run(capsys, client_stack, "submit", "wait", "--metadata", slow)
    job_id = out.strip()
    code, out, _ = run(capsys, client_stack, "cancel", job_id)
    assert code == 0 and job_id in out
    code, out, _ = run(capsys, client_stack, "wait", job_id, "--json")
    assert code == 1 and json.loads(out)["status"] == "cancelled"  # exit 0 only for a success
    code, out, err = run(capsys, client_stack, "cancel", job_id, "--json")
    assert code == 1 and out == "" and err == "tnllm cancel: job already cancelled\n"


def test_jobs_lists_every_page(capsys: pytest.CaptureFixture[str], client_stack: Stack) -> None:
    ids = [run(capsys, client_stack, "submit", f"n{i}", "--max-new-tokens", "1")[1].strip() for i in range(3)]
    for job_id in ids:
        assert run(capsys, client_stack, "wait", job_id)[0] == 0
    code, out, _ = run(capsys, client_stack, "jobs", "--json", "--limit", "0")
    listed = [json.loads(line)["id"] for line in out.splitlines()]
    assert code == 0 and listed[:3] == ids[::-1] and len(listed) == len(set(listed))
    code, out, _ = run(capsys, client_stack, "jobs", "--status", "succeeded", "--json", "--limit", "0")
    assert {json.loads(line)["status"] for line in out.splitlines()} == {"succeeded"}
    code, out, _ = run(capsys, client_stack, "jobs", "--limit", "3")
    assert code == 0 and all(job_id in out for job_id in ids) and "n2" in out


def test_chat_with_scripted_input(
    capsys: pytest.CaptureFixture[str], client_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line per user turn (blank lines skipped), EOF ends; every turn carries the conversation."""
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n\nand then?\n"))
    argv = ["chat", "--max-new-tokens", "6", "--ignore-eos", "--system", "Be brief."]
    code, out, _ = run(capsys, client_stack, *argv)
    assert code == 0
    _, listing, _ = run(capsys, client_stack, "jobs", "--json", "--limit", "2")
    second, first = (json.loads(line) for line in listing.splitlines())
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
    ]  # fmt: skip
    assert second["messages"] == [
        *first["messages"],
        {"role": "assistant", "content": first["result"]["text"]},
        {"role": "user", "content": "and then?"},
    ]
    assert out == first["result"]["text"] + "\n" + second["result"]["text"] + "\n"


def test_mistakes_are_one_line_without_a_traceback(client_stack: Stack) -> None:
    """Real processes: a bad flag, an unknown job, a server that is down, a request the server or
    the contract refuses, a bad TNLLM_ variable. TNLLM_URL / TNLLM_API_KEY reach the commands
    through Settings."""
    env = {**os.environ, "TNLLM_URL": client_stack.api_url}
    down = f"http://127.0.0.1:{free_port()}"
    cases = {
        ("submit", "hi", "--max-new-tokens", "x"): (2, "tnllm submit: error: argument --max-new-tokens"),
        ("submit", "hi", "--metadata", "[1]"): (2, "not a JSON object"),
        ("submit", "hi", "--max-new-tokens", "0"): (2, "tnllm submit: max_new_tokens: Input should be"),
        ("submit", "hi", "--max-new-tokens", "999999"): (2, "tnllm submit: max_new_tokens: at most"),
        ("status", "no-such-job"): (1, "tnllm status: no job with id 'no-such-job'"),
        ("wait", "no-such-job", "--url", down): (1, f"tnllm wait: cannot reach the tnllm server at {down}"),
        ("bogus",): (2, "tnllm: error: argument command: invalid choice"),
        ("jobs", "--api-key", "k", "--status", "nope"): (2, "argument --status: invalid choice"),
    }

    def call(argv: tuple[str, ...], extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            tnllm_argv(*argv), env={**env, **(extra or {})}, capture_output=True, text=True, timeout=60
        )

    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(cases, pool.map(call, cases), strict=True))
        bad_env = pool.submit(call, ("jobs",), {"TNLLM_PORT": "many"})
        listed = pool.submit(call, ("jobs", "--json", "--limit", "1"))
    for argv, (status, text) in cases.items():
        proc = done[argv]
        assert proc.returncode == status and text in proc.stderr, (argv, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr + proc.stdout, argv
    proc = bad_env.result()
    assert proc.returncode == 2 and proc.stderr.startswith("tnllm jobs: TNLLM_PORT: ")
    assert len(proc.stderr.splitlines()) == 1
    proc = listed.result()
    assert proc.returncode == 0 and json.loads(proc.stdout)["object"] == "job"


def test_version() -> None:
    out = subprocess.run(tnllm_argv("--version"), capture_output=True, text=True, check=True)
    from tnllm import __version__

    assert out.stdout.strip() == f"tnllm {__version__}"


def test_the_spinner_and_summary_words() -> None:
    """What the spinner shows while a job waits (its queue position) and the summary line's words."""
    from datetime import UTC, datetime, timedelta

    from tnllm.cli.client_cmds import describe
    from tnllm.protocol.jobs import JobPublic

    now = datetime.now(UTC)
    queued = JobPublic(id="j", status="queued", created_at=now, priority=0, queue_position=3)
    assert describe(queued) == "queued · position 3"
    done = JobPublic.model_validate(
        {
            **queued.model_dump(), "status": "failed", "queue_position": None, "started_at": now,
            "finished_at": now + timedelta(seconds=1.5),
            "error": {"type": "timeout", "message": "ran longer than 1800 s"},
        }
    )  # fmt: skip
    assert describe(done) == "failed · timeout: ran longer than 1800 s · 1.50 s"
