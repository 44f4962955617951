"""The lines of the Batch API's files: parsing and checking an input file, a request line → its
job, a finished request → its output-file line (OpenAI's ``{"id", "custom_id", "response",
"error"}``)."""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import ValidationError

from tnllm.api.errors import ApiError
from tnllm.api.openai import adapt, answers
from tnllm.api.openai.errors import api_error_payload
from tnllm.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from tnllm.api.schemas import JobCreate
from tnllm.store import JobRecord


def parse_lines(
    data: bytes, endpoint: str, max_lines: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The requests of an input file and the errors that make the batch fail (OpenAI's
    ``{"code", "message", "param", "line"}``)."""
    requests: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [
            {"code": "invalid_file", "message": "the file is not UTF-8 text", "param": None, "line": None}
        ]
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        problem, line = _check_line(raw, endpoint, seen)
        if problem:
            errors.append({"code": "invalid_request", "message": problem, "param": None, "line": number})
        else:
            requests.append({**line, "line": number})
    if len(requests) > max_lines:
        errors.append(
            {
                "code": "too_many_requests",
                "message": f"at most {max_lines} requests",
                "param": None,
                "line": None,
            }
        )
    if not requests and not errors:
        errors.append(
            {"code": "empty_file", "message": "the file holds no requests", "param": None, "line": None}
        )
    return requests, errors


def _check_line(raw: str, endpoint: str, seen: set[str]) -> tuple[str | None, dict[str, Any]]:
    try:
        line = json.loads(raw)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc}", {}
    if not isinstance(line, dict):
        return "not a JSON object", {}
    custom_id, body = line.get("custom_id"), line.get("body")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id: a non-empty string is required", {}
    if custom_id in seen:
        return f"custom_id: {custom_id!r} is used twice", {}
    seen.add(custom_id)
    if line.get("method") != "POST":
        return "method: must be POST", {}
    if line.get("url") != endpoint:
        return f"url: must be the batch's endpoint {endpoint}", {}
    if not isinstance(body, dict):
        return "body: an object is required", {}
    return None, {"custom_id": custom_id, "body": body}


def line_job(endpoint: str, body: dict[str, Any], priority: int) -> tuple[str, JobCreate]:
    """(model, job) of one request line; ``ApiError`` for a request the routes would refuse."""
    try:
        request: ChatCompletionRequest | CompletionRequest
        if endpoint == "/v1/chat/completions":
            request = ChatCompletionRequest.model_validate(body)
        else:
            request = CompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise ApiError(400, f"{param}: {err.get('msg')}", field=param) from exc
    if request.stream:
        raise ApiError(400, "stream: not available in a batch", field="stream")
    if isinstance(request, ChatCompletionRequest):
        job = adapt.chat_job(request, priority)
    else:
        if not isinstance(request.prompt, str):
            raise ApiError(400, "prompt: one string per batch request", field="prompt")
        job = adapt.completion_jobs(request, [request.prompt], priority)[0]
    return request.model, job.model_copy(update={"priority": priority})


def output_line(
    batch: dict[str, Any], item: dict[str, Any], record: JobRecord | None
) -> tuple[bool, dict[str, Any]]:
    """(succeeded, the output-file line) of one request."""
    line: dict[str, Any] = {"id": f"batch_req_{item['job'] or item['line']}", "custom_id": item["custom_id"]}
    if item["error"] is not None:
        return False, {**line, "response": {**item["error"], "request_id": None}, "error": None}
    if record is None:
        error = {"code": "expired", "message": "the job's record expired before the batch finalized"}
        return False, {**line, "response": None, "error": error}
    failure = adapt.job_failure(record)
    if failure is not None:
        if failure.extra.get("code") == "job_cancelled" and batch["status"] == "cancelling":
            return False, {
                **line,
                "response": None,
                "error": {"code": "batch_cancelled", "message": failure.message},
            }
        status, body = api_error_payload(failure)
        return False, {
            **line,
            "response": {"status_code": status, "request_id": record.id, "body": body},
            "error": None,
        }
    chat = batch["endpoint"] == "/v1/chat/completions"
    finished = int(record.finished_at.timestamp()) if record.finished_at else int(time.time())
    base = {"id": ("chatcmpl-" if chat else "cmpl-") + record.id, "created": finished, "model": item["model"]}
    answer = answers.chat_completion(base, [record]) if chat else answers.text_completion(base, [record])
    return True, {
        **line,
        "response": {"status_code": 200, "request_id": record.id, "body": answer.model_dump()},
        "error": None,
    }
