"""The chat template: checking a conversation, compiling a template in a sandbox, rendering it.

Torch-free. Templates may come from a downloaded model folder, so they run in Jinja's immutable
sandbox. The default system message is not added here: ``tnllm.text.prompt`` owns that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tnllm.errors import TokenizerError

# The ChatML template that older transformers applied by default to tokenizers without their own
# (the TransNormerLLM tutorial's prompt format). The default system message is added by
# ``tnllm.text.prompt.render_prompt``, so overriding templates get it too.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT_ROLES = ("system", "user", "assistant")


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


def render_chat(
    template: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool,
    bos_token: str,
    eos_token: str,
) -> str:
    """Render a conversation (checked first) with a compiled template into the prompt text."""
    checked = validate_messages(messages)
    try:
        return str(
            template.render(
                messages=checked,
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
            )
        )
    except TokenizerError:
        raise
    except Exception as exc:  # jinja2 errors of a user-supplied template
        raise TokenizerError(f"chat template failed: {exc}") from exc
