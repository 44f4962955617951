"""The one exception tree of tnllm (torch-free, imports nothing).

Callers catch a branch (``RequestError``, ``ModelError``, ``EngineError``, ...) or ``TnllmError`` for
everything. Each class also derives from the builtin it has always been (``ValueError`` for bad input,
``RuntimeError`` for a failed operation), so existing ``except ValueError`` code keeps working.

```
TnllmError
├── ConfigurationError (ValueError)      settings that cannot work
│   ├── FlowerConfigError
│   └── WebhookSecretError
├── RequestError (ValueError)            a caller's input the server refuses
│   ├── RequestRejected                  the engine refuses a request before it takes a slot
│   ├── WebhookRefused                   a job's webhook cannot be accepted (names the field)
│   └── WebhookURLError                  a webhook URL that may not be called
│       └── ResolutionError              its host did not resolve (possibly transient)
├── ModelError                           a checkpoint or model that cannot be used
│   ├── CheckpointError (ValueError)     the message names the file and tensor
│   │   └── ConfigError                  config.json unusable
│   ├── TokenizerError (ValueError)      tokenizer files or chat template unusable
│   └── ModelResolutionError (RuntimeError)   not found / not downloadable / not recognised
│       └── ModelUnavailable             missing or not downloadable: another model would do
├── EngineError (RuntimeError)           the engine failed while running a request
│   ├── EngineLost                       its process died: requests abandoned, not failed
│   └── EngineLoadFailed                 the engine process could not load the model
├── StoreError                           Redis-side trouble of our own making
│   ├── RedisServerError (RuntimeError)  the embedded redis-server did not start
│   └── LeaseLost                        another worker owns the job now: write nothing
└── JobFailed (RuntimeError)             a job ended failed: its Celery task ends FAILURE with it
```
"""

from __future__ import annotations


class TnllmError(Exception):
    """Base of every error tnllm raises on purpose."""


class ConfigurationError(TnllmError, ValueError):
    """Settings that cannot work; the message names the setting."""


class FlowerConfigError(ConfigurationError):
    """Flower settings that would be unsafe or cannot be parsed."""


class WebhookSecretError(ConfigurationError):
    """No usable signing secret is configured."""


class RequestError(TnllmError, ValueError):
    """A caller's input that the server refuses; the message says which part and why."""


class RequestRejected(RequestError):
    """A request the engine refuses before it takes a slot (empty prompt, over the context limit...)."""


class WebhookRefused(RequestError):
    """The job's webhook cannot be accepted; ``field`` names the culprit, ``str(err)`` the reason."""

    def __init__(self, message: str, field: str = "webhook.url") -> None:
        super().__init__(message)
        self.field = field


class WebhookURLError(RequestError):
    """A webhook URL that may not be called; ``str(err)`` names the reason (shown in the 422)."""


class ResolutionError(WebhookURLError):
    """The host did not resolve (possibly transient: delivery retries, submit refuses)."""


class ModelError(TnllmError):
    """A checkpoint, tokenizer or model reference that cannot be used."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint folder, config or weight file that cannot be used; the message names the file."""


class ConfigError(CheckpointError):
    """A config.json that is not an official TransNormerLLM config, or has unusable values."""


class TokenizerError(ModelError, ValueError):
    """A tokenizer folder or template that cannot be used; the message names the file."""


class ModelResolutionError(ModelError, RuntimeError):
    """The model cannot be found, downloaded or recognised; the message says why and what to do."""


class ModelUnavailable(ModelResolutionError):
    """The model is not here and cannot be fetched; the command that caught it names the way out
    in its own spelling (``--model demo``, ``make run MODEL=demo``)."""


class EngineError(TnllmError, RuntimeError):
    """The engine failed while running a request (the model raised, or the engine was stopped)."""


class EngineLost(EngineError):
    """The engine's process is gone: its requests did not fail, they were abandoned with it."""


class EngineLoadFailed(EngineError):
    """The engine process could not load the model (the message says why)."""


class StoreError(TnllmError):
    """Trouble in the job store that is not a plain Redis outage."""


class RedisServerError(StoreError, RuntimeError):
    """redis-server could not be found or did not start."""


class LeaseLost(StoreError):
    """Another worker owns the job now (or it was reaped): stop without writing anything."""


class JobFailed(TnllmError, RuntimeError):
    """Raised by the generate task after its job was recorded failed, so that Celery (and Flower)
    see the task end FAILURE; the message is ``"<error type>: <message>"`` of the job's error."""
