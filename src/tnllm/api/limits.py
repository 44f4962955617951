"""Request limits: the body-size middleware (413), prompt token counting and the per-key rate
limit and token quota's HTTP headers (the IETF httpapi RateLimit fields, draft 11).

Prompts are counted with the checkpoint's own tokenizer (``tnllm/text/tokenizer.py``, torch-free) when
the model folder is on this machine; otherwise a coarse byte bound stands in (the worker still refuses
prompts that do not fit the context).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tnllm.api.body import replay
from tnllm.config import Settings, model_folder
from tnllm.store import GenerationParams, quotas
from tnllm.store.quotas import Admission, Verdict
from tnllm.text.prompt import render_prompt

log = logging.getLogger(__name__)

#: Without a tokenizer a prompt may use this many UTF-8 bytes per allowed token (CJK text runs
#: at about 3-6 bytes per token, English at about 4).
FALLBACK_BYTES_PER_TOKEN = 8
#: Seconds between attempts to find the tokenizer when the model folder is not there yet.
TOKENIZER_RETRY_S = 30.0


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with a JSON 413, by Content-Length and by the bytes
    actually streamed (chunked uploads). The body is buffered (at most ``max_bytes``) and replayed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self.app(scope, replay(b"".join(chunks), receive), send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "type": "payload_too_large",
                    "message": f"request body is larger than {self.max_bytes} bytes",
                    "field": "body",
                    "limit": self.max_bytes,
                }
            }
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


#: Names of the per-key policies in ``RateLimit-Policy`` / ``RateLimit``.
RATE_POLICY = "submissions"
QUOTA_POLICY = "completion-tokens"


def rate_limit_headers(settings: Settings, admission: Admission) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` for the enabled per-key limits; ``Retry-After`` too
    when ``admission`` refused the submission (the violated policy's reset)."""
    policies, current = [], []
    if settings.rate_limit:
        left = max(0, settings.rate_limit - admission.submissions)
        policies.append(f'"{RATE_POLICY}";q={settings.rate_limit};w={quotas.RATE_WINDOW_S}')
        current.append(f'"{RATE_POLICY}";r={left};t={quotas.ceil_s(admission.rate_reset_s)}')
    if settings.token_quota:
        left = max(0, settings.token_quota - admission.tokens_used)
        policies.append(f'"{QUOTA_POLICY}";q={settings.token_quota};w={quotas.DAY_S}')
        current.append(f'"{QUOTA_POLICY}";r={left};t={quotas.ceil_s(admission.quota_reset_s)}')
    headers = {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(current)} if policies else {}
    if admission.verdict is Verdict.RATE:
        headers["Retry-After"] = str(quotas.ceil_s(admission.rate_reset_s))
    elif admission.verdict is Verdict.TOKENS:
        headers["Retry-After"] = str(quotas.ceil_s(admission.quota_reset_s))
    return headers


def local_model_folder(settings: Settings) -> Path | None:
    """Where the model's files are on this machine (``tnllm.config.model_folder``, the workers'
    mapping), without writing or downloading anything; None while the folder is absent."""
    folder = model_folder(settings.model, settings.data_dir)
    return folder if folder is not None and folder.is_dir() else None


class PromptCounter:
    """Counts a job's prompt tokens (chat template included) with the model's tokenizer, loaded
    lazily and retried every ``TOKENIZER_RETRY_S`` while the model folder is missing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tokenizer: Any = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    def tokenizer(self) -> Any:
        """The tokenizer, or None when it is not (yet) available on this machine."""
        with self._lock:
            if self._tokenizer is None and time.monotonic() >= self._next_try:
                self._next_try = time.monotonic() + TOKENIZER_RETRY_S
                self._tokenizer = self._load()
            return self._tokenizer

    def _load(self) -> Any:
        folder = local_model_folder(self.settings)
        if folder is None:
            return None
        try:
            from tnllm.text.tokenizer import load_tokenizer

            tok = load_tokenizer(folder, self.settings)
        except (ImportError, OSError, ValueError) as exc:
            log.warning("no tokenizer for prompt limits (%s); using a byte bound", exc)
            return None
        if tok is not None:
            log.info("counting prompt tokens with the tokenizer in %s", folder)
        return tok

    def count(self, params: GenerationParams) -> tuple[int, bool]:
        """(tokens, exact): exact token count with the tokenizer, else a byte-based upper estimate.

        Blocking (CPU): call it in a worker thread for large prompts.
        """
        tok = self.tokenizer()
        if tok is not None:
            try:  # the worker's own rendering, so the count is the prompt the engine gets
                return len(render_prompt(tok, params, self.settings.system_prompt)), True
            except ValueError as exc:  # a template that refuses this conversation
                log.debug("chat template refused a conversation: %s", exc)
        text = params.prompt or "".join(m.content for m in params.messages or [])
        size = len(text.encode("utf-8"))
        return -(-size // FALLBACK_BYTES_PER_TOKEN), False
