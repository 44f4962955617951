"""The one typed settings object of every tnllm process (env prefix ``TNLLM_``).

Only this module reads the environment. Each entrypoint builds ``Settings()`` once and passes it
down. Model hyper-parameters never come from here: they come from the checkpoint's config.json.
Typed views hand a consumer only its own knobs: ``Settings.engine_config()`` is what the engine
(and the engine process's wire) gets, with no Redis URL, API key or webhook secret in it.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The model a deployment serves when TNLLM_MODEL is unset (a ModelScope id).
DEFAULT_MODEL = "OpenNLPLab/TransNormerLLM-7B"
#: The system message put before a conversation that has none (TNLLM_SYSTEM_PROMPT).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
#: ``TNLLM_MODEL=demo``: the tiny random checkpoint written into the data dir.
DEMO_MODEL = "demo"
# owner/name as ModelScope spells them; nothing that could climb out of the models folder
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_model_id(value: str) -> bool:
    """Whether ``value`` is shaped like a ModelScope model id (``owner/name``)."""
    return bool(_MODEL_ID.match(value)) and ".." not in value


def model_folder(model: str, data_dir: Path) -> Path | None:
    """Where the checkpoint of ``model`` (Settings.model) lives on this machine, whether or not it
    is there yet; nothing is written or downloaded. ``demo`` → ``<data_dir>/demo-model``; an
    existing folder → itself; a ModelScope id → ``<data_dir>/models/<owner>/<name>``; anything
    else (a missing path, a file) → None."""
    model = model.strip()
    if model == DEMO_MODEL:
        return Path(data_dir) / "demo-model"
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if is_model_id(model):
        return Path(data_dir) / "models" / model
    return None


def environment() -> dict[str, str]:
    """A copy of this process's environment: the base of a child process's (``tnllm up``)."""
    return dict(os.environ)


def set_environment(name: str, value: str) -> None:
    """Set a variable of this process's environment, for the child processes it starts."""
    os.environ[name] = value


def _split_csv(value: object) -> object:
    """Accept ``a,b,c`` (env style) as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of tnllm. Environment variables are ``TNLLM_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix="TNLLM_", extra="ignore", validate_default=True)

    # --- where things live -------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://, rediss://, sentinel://). "
        "Unset: `tnllm up` starts an embedded Redis.",
    )
    redis_sentinel_master: str = Field(
        default="mymaster", description="Sentinel master name for sentinel:// URLs (or `?master_name=`)."
    )
    redis_socket_timeout: float = Field(
        default=30.0,
        gt=5,
        description="Seconds a Redis command (job store or broker) waits for its answer before the "
        "connection counts as dead and is replaced; above the 5 s blocking reads of SSE streams.",
    )
    redis_health_check_interval: float = Field(
        default=25.0, gt=0, description="A Redis connection idle this long is PINGed before its next use."
    )
    redis_tcp_keepalive: int = Field(
        default=15,
        ge=1,
        description="TCP keepalive of every Redis connection: probes start after this many idle seconds, "
        "then every third of it, 3 unanswered probes close it (a silent network partition is noticed "
        "in about twice this, even on an idle or blocked connection).",
    )
    data_dir: Path = Field(
        default=Path(".tnllm"),
        description="Holds the embedded Redis data (AOF), the demo checkpoint, downloads and logs.",
    )

    # --- model ------------------------------------------------------------------------------
    model: str = Field(
        default=DEFAULT_MODEL,
        description="`demo`, a local checkpoint folder, or a ModelScope model id (downloaded into data_dir).",
    )
    model_revision: str | None = Field(default=None, description="ModelScope revision for `model`.")
    device: str = Field(default="auto", description="`auto` (cuda if available), `cpu`, `cuda`, `cuda:N`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weight dtype: `auto` is bfloat16 on CUDA, float32 on CPU."
    )
    state_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Recurrent-state dtype. `bfloat16` (CUDA only) halves the state traffic, which "
        "speeds up large batches, but it moves the logits noticeably (docs/PERFORMANCE.md has the "
        "figures); validate it on your checkpoint before use.",
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template overriding the model folder's and the built-in one."
    )
    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, description="Default system message.")

    # --- request limits ---------------------------------------------------------------------
    default_max_new_tokens: int = Field(default=512, ge=1, description="max_new_tokens when a job omits it.")
    max_new_tokens_limit: int = Field(default=4096, ge=1, description="Largest max_new_tokens a job may ask.")
    max_prompt_tokens: int = Field(default=8192, ge=1, description="Largest prompt, in tokens (413 above).")
    max_context: int = Field(
        default=16384, ge=2, description="Prompt + max_new_tokens must fit here, else the request is refused."
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest HTTP request body (413 above)."
    )
    max_body_depth: int = Field(
        default=32, ge=2, le=512, description="Deepest nesting of arrays/objects in a JSON body (422 above)."
    )
    max_queued: int = Field(default=10000, ge=1, description="Queued jobs before submissions get 429.")
    max_stop_strings: int = Field(default=8, ge=0, description="Most stop strings a job may give.")
    max_n: int = Field(
        default=16, ge=1, le=128, description="Most choices (`n`) a job may ask (each takes an engine slot)."
    )
    rate_limit: int = Field(
        default=0,
        ge=0,
        description="Job submissions per minute per API key, over all API processes (429 above); 0: off.",
    )
    token_quota: int = Field(
        default=0,
        ge=0,
        description="Completion tokens per API key per UTC day, counted as jobs finish; once reached, "
        "submissions get 429 until the day ends (accepted jobs still run); 0: off.",
    )

    # --- API --------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="API bind address.")
    port: int = Field(default=8000, description="API port.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated bearer keys. Empty: no auth (all jobs belong to `anonymous`).",
    )
    wait_max_seconds: float = Field(default=60.0, gt=0, description="Upper bound of `?wait=`.")
    compat_timeout: float = Field(default=600.0, gt=0, description="How long `POST /` waits for its job.")

    # --- OpenAI-compatible routes and the Batch API ------------------------------------------
    served_model_name: str | None = Field(
        default=None,
        description="The model name of /v1/models and the OpenAI routes' `model`; unset: the ModelScope "
        "id of `model`, or its folder name.",
    )
    openai_priority: int = Field(
        default=5, ge=0, le=9, description="Priority of OpenAI-route requests that give none (`priority`)."
    )
    openai_timeout: float = Field(
        default=600.0, gt=0, description="How long a non-streaming OpenAI-route request waits for its job."
    )
    batch_priority: int = Field(
        default=0,
        ge=0,
        le=9,
        description="Priority of Batch API jobs (below openai_priority, so interactive runs first).",
    )
    batch_max_file_bytes: int = Field(
        default=100 << 20, ge=1024, description="Largest file `POST /v1/files` accepts (413 above)."
    )
    batch_max_lines: int = Field(default=50_000, ge=1, description="Most requests one batch may hold.")
    batch_poll_interval: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between the API's looks for batches whose jobs all ended.",
    )

    # --- client commands (tnllm submit, jobs, status, wait, stream, cancel, chat) -------------
    url: str | None = Field(
        default=None,
        description="The server the client commands talk to. Unset: `http://127.0.0.1:<port>`.",
    )
    api_key: str | None = Field(default=None, description="Bearer key the client commands send.")

    # --- jobs and Celery --------------------------------------------------------------------
    result_ttl: int = Field(default=7 * 24 * 3600, ge=60, description="Seconds a job record is kept.")
    job_time_limit: float = Field(default=1800.0, gt=0, description="Hard limit on one job's run, seconds.")
    visibility_timeout: float = Field(
        default=3600.0, gt=0, description="Redis broker visibility timeout; must exceed job_time_limit."
    )
    lease_ttl: float = Field(default=30.0, gt=0, description="Seconds a running job's lease lives unrenewed.")
    lease_renew_interval: float = Field(default=10.0, gt=0, description="How often a worker renews leases.")
    reaper_interval: float = Field(default=10.0, gt=0, description="How often expired leases are looked for.")
    max_attempts: int = Field(default=3, ge=1, description="Runs before a job that kills workers fails.")
    redis_outage_tolerance: float = Field(
        default=300.0,
        gt=0,
        description="How long a worker keeps a finished job's result while Redis is unreachable, "
        "retrying the write, seconds; after that the run is given up and the job runs again.",
    )
    worker_concurrency: int = Field(
        default=0, ge=0, description="Tasks per GPU worker process; 0 means the engine's slot count."
    )
    worker_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["generate"], description="Celery queues a GPU worker consumes."
    )
    workers: int = Field(default=1, ge=1, description="GPU worker processes `tnllm up` starts.")
    task_events: bool = Field(
        default=True,
        description="Celery task events (sent, received, started, succeeded...), which Flower's task list "
        "needs; off saves a Redis publish per event in the API and the workers.",
    )
    worker_shutdown_grace: float = Field(
        default=30.0,
        ge=0,
        description="On warm shutdown, seconds running jobs get to finish before going back to the queue.",
    )
    stream_flush_interval: float = Field(
        default=0.05,
        gt=0,
        le=5,
        description="How often a worker writes the token deltas of all its running jobs (one Redis "
        "pipeline) and, every second round, checks them for cancel requests; seconds.",
    )
    debug_faults: bool = Field(
        default=False,
        description="Test only: workers honour `metadata.tnllm_debug` of a job (`crash`, `delay`); "
        "see tnllm/worker/faults.py. Never enable in production.",
    )

    # --- engine -----------------------------------------------------------------------------
    engine_slots: int = Field(
        default=0, ge=0, description="Concurrent sequences per worker; 0 derives it from free memory."
    )
    prefill_token_budget: int = Field(
        default=512, ge=1, description="Prompt tokens prefilled per engine step (bounds decode stalls)."
    )
    preemption: bool = Field(
        default=True,
        description="When every slot is busy, a job whose priority beats a running one's by "
        "`preempt_priority_gap` takes its slot; the preempted sequence's state waits in host memory "
        "and it goes on later with no recompute (docs/STATE.md).",
    )
    preempt_priority_gap: int = Field(
        default=1, ge=1, le=9, description="The least priority difference that preempts a running job."
    )
    worker_preempt_reserve: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Task threads a GPU worker runs beyond its slots when preemption is on, so a "
        "higher-priority job can enter a full engine (each preempts one running job).",
    )
    state_cache: bool = Field(
        default=True,
        description="Keep the recurrent states of prompts, prefixes and finished sequences (docs/STATE.md): "
        "prompts resume from their longest saved prefix and `continue_from` turns from the last state.",
    )
    state_cache_device_bytes: int = Field(
        default=2 << 30, ge=0, description="State cache budget on the engine's device (GPU memory), bytes."
    )
    state_cache_host_bytes: int = Field(
        default=8 << 30, ge=0, description="State cache budget in host memory (pinned on CUDA), bytes."
    )
    state_cache_disk_bytes: int = Field(
        default=16 << 30,
        ge=0,
        description="State cache budget of files under `<data_dir>/states` (kept across restarts), bytes.",
    )
    state_cache_min_tokens: int = Field(
        default=0,
        ge=0,
        description="Save no state of fewer tokens (pins excepted): on a GPU, short prefills cost less "
        "than copying a state (65 MB for the 7B; docs/STATE.md).",
    )
    engine_process: bool = Field(
        default=True,
        description="Run each GPU worker's engine (model, GPU, step loop) in a child process of the "
        "worker, so Celery's threads never hold the engine's GIL; false runs it on a thread of the "
        "worker process.",
    )

    # --- webhooks ---------------------------------------------------------------------------
    webhook_secret: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated `whsec_` secrets; every one signs (rotation)."
    )
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 60.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0],
        description="Seconds before each retry of a failed delivery.",
    )
    webhook_timeout: float = Field(default=10.0, gt=0, description="Per-attempt delivery timeout, seconds.")
    webhook_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts, IPs or CIDRs exempt from the SSRF address rules."
    )
    webhook_concurrency: int = Field(
        default=8, ge=1, description="Deliveries a webhook worker runs at once (threads)."
    )

    # --- operations -------------------------------------------------------------------------
    flower_port: int = Field(default=5555, description="Flower dashboard port.")
    flower_address: str = Field(default="127.0.0.1", description="Flower bind address.")
    flower_basic_auth: str | None = Field(
        default=None,
        description="`user:password` for Flower. Required when Flower binds a non-loopback address.",
    )
    log_format: Literal["text", "json"] = Field(default="text", description="`json`: one object per line.")
    log_level: str = Field(default="INFO", description="Root log level.")
    log_content: bool = Field(default=False, description="Debug only: log prompts and outputs.")
    metrics_port: int = Field(
        default=0, ge=0, description="Worker Prometheus port; 0: a free one (logged, in the heartbeat)."
    )
    metrics_host: str = Field(default="127.0.0.1", description="Worker Prometheus bind address.")
    api_processes: int = Field(
        default=0,
        ge=0,
        description="uvicorn worker processes of `tnllm api` (sharing its port); "
        "0: one per 4 CPU cores, 1 to 8.",
    )
    metrics_token: str | None = Field(
        default=None,
        min_length=16,
        description="Bearer token the API's /metrics requires (`Authorization: Bearer <token>`); "
        "unset: /metrics is open.",
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias="PROMETHEUS_MULTIPROC_DIR",
        description="prometheus-client's own variable: set it (an empty folder) when the API runs "
        "several processes, so /metrics sums them.",
    )

    @field_validator("api_keys", "worker_queues", "webhook_secret", "webhook_allowlist", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("webhook_retry_delays", mode="before")
    @classmethod
    def _csv_floats(cls, value: object) -> object:
        return _split_csv(value)

    @model_validator(mode="after")
    def _check_timeouts(self) -> Settings:
        if self.visibility_timeout <= self.job_time_limit:
            raise ValueError(
                "visibility_timeout must be above job_time_limit, or Redis redelivers running jobs "
                f"(visibility_timeout={self.visibility_timeout}, job_time_limit={self.job_time_limit})"
            )
        if self.lease_renew_interval >= self.lease_ttl:
            raise ValueError("lease_renew_interval must be below lease_ttl")
        return self

    def served_name(self) -> str:
        """The served model name: ``served_model_name``, else the ModelScope id, else the folder name."""
        if self.served_model_name:
            return self.served_model_name
        model = self.model.strip()
        if model == DEMO_MODEL or (is_model_id(model) and not Path(model).expanduser().is_dir()):
            return model
        return Path(model).expanduser().name or model

    def client_url(self) -> str:
        """Where the client commands connect: ``url``, else this machine's API on ``port``."""
        return self.url or f"http://127.0.0.1:{self.port}"

    def redis_socket_options(self) -> dict[str, Any]:
        """The socket options of every Redis connection (job store clients and the broker), in the
        keywords redis-py and kombu's Redis transport both take: how soon a connection whose peer
        went silent (a partition drops packets, nothing resets) counts as dead and is replaced."""
        idle = self.redis_tcp_keepalive
        return {
            "socket_timeout": self.redis_socket_timeout,
            "health_check_interval": self.redis_health_check_interval,
            "socket_keepalive": True,
            "socket_keepalive_options": {
                socket.TCP_KEEPIDLE: idle,
                socket.TCP_KEEPINTVL: max(1, idle // 3),
                socket.TCP_KEEPCNT: 3,
            },
        }

    def engine_config(self) -> EngineConfig:
        """The engine's view of these settings (``EngineConfig``)."""
        return EngineConfig(**self.model_dump(include=set(EngineConfig.model_fields)))


class EngineConfig(BaseModel):
    """What building and running an engine reads (field meanings: ``Settings``); no defaults here,
    so ``Settings`` stays the one place that declares them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    model_revision: str | None
    data_dir: Path
    device: str
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    state_dtype: Literal["float32", "bfloat16"]
    chat_template: str | None
    engine_slots: int
    prefill_token_budget: int
    max_context: int
    preemption: bool
    preempt_priority_gap: int
    state_cache: bool
    state_cache_device_bytes: int
    state_cache_host_bytes: int
    state_cache_disk_bytes: int
    state_cache_min_tokens: int
    log_format: Literal["text", "json"]
    log_level: str
    log_content: bool
