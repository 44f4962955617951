"""The models this deployment serves: each ready worker's (its heartbeat's ``served_model``) and
the API's own ``Settings.served_name()`` (so requests queue before any worker is up)."""

from __future__ import annotations

from tnllm.api.deps import Services
from tnllm.api.errors import ApiError
from tnllm.api.openai.schemas import Model


async def served_models(services: Services) -> list[Model]:
    """The models this deployment serves: each ready worker's, and the API's own setting."""
    starts: dict[str, list[float]] = {services.settings.served_name(): []}
    for worker in await services.store.workers():
        if worker.model_loaded and worker.served_model:
            starts.setdefault(worker.served_model, []).append(worker.started_at)
    return [
        Model(
            id=name,
            created=int(min(times)) if times else 0,
            owned_by=name.split("/")[0] if "/" in name else "tnllm",
        )
        for name, times in starts.items()
    ]


async def check_model(services: Services, model: str) -> None:
    """404 ``model_not_found`` for a model this deployment does not serve."""
    if model not in {m.id for m in await served_models(services)}:
        raise ApiError(404, f"the model {model!r} does not exist", field="model", code="model_not_found")
