"""Dependencies of the routes: the per-process services (built by the lifespan) and the caller's
identity. Routes declare them with the ``Annotated`` aliases at the bottom."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tnllm.api.errors import ApiError
from tnllm.api.limits import PromptCounter
from tnllm.api.metrics import ApiMetrics
from tnllm.api.notify import FinishWatcher
from tnllm.api.producer import JobProducer
from tnllm.config import Settings
from tnllm.store import AsyncJobStore

#: Owner of every job when no API keys are configured.
ANONYMOUS = "anonymous"


@dataclass
class Services:
    """What the lifespan builds once per process (``app.state.services``)."""

    settings: Settings
    store: AsyncJobStore
    watcher: FinishWatcher
    producer: JobProducer
    counter: PromptCounter
    metrics: ApiMetrics


def get_services(request: Request) -> Services:
    """The process services (set up by ``tnllm.api.main`` 's lifespan)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    """The process Settings."""
    return services.settings


def get_store(services: ServicesDep) -> AsyncJobStore:
    """The async job store."""
    return services.store


def owner_of_key(key: str) -> str:
    """The owner id stored with jobs: a hash of the API key, never the key itself."""
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:32]


_bearer = HTTPBearer(
    auto_error=False, description="`Authorization: Bearer <key>` when TNLLM_API_KEYS is set."
)


def get_owner(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's owner id; 401 when keys are configured and none (or a wrong one) is given."""
    keys = services.settings.api_keys
    if not keys:
        return ANONYMOUS
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(
            401,
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials.encode()
    # compare against every key in constant time, so timing tells nothing about near misses
    matched = [k for k in keys if hmac.compare_digest(given, k.encode())]
    if not matched:
        raise ApiError(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    return owner_of_key(matched[0])


_metrics_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="MetricsBearer",
    description="`Authorization: Bearer <token>` on /metrics when TNLLM_METRICS_TOKEN is set.",
)


def check_metrics_token(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_metrics_bearer)],
) -> None:
    """401 unless the request carries TNLLM_METRICS_TOKEN (when it is set)."""
    token = services.settings.metrics_token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(
            401,
            "/metrics needs `Authorization: Bearer <TNLLM_METRICS_TOKEN>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[AsyncJobStore, Depends(get_store)]
OwnerDep = Annotated[str, Depends(get_owner)]
MetricsAccess = Depends(check_metrics_token)
