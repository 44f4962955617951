"""docker-compose.yml, the Dockerfiles and the Prometheus/Grafana files agree with the code.

Docker does not run here: these tests read the files and hold them against Settings, the CLI, the
health-check helper and the metric names the code defines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tnllm.cli.flower import check as flower_check
from tnllm.cli.main import HANDLERS, build_parser
from tnllm.config import Settings
from tools.settings_doc import env_var

ROOT = Path(__file__).resolve().parents[2]
GPU_WORKERS = ["worker-gpu0", "worker-gpu1", "worker-gpu2", "worker-gpu3"]
LONG_RUNNING = ["redis", "api", *GPU_WORKERS, "webhook-worker", "flower", "prometheus", "grafana"]
SETTINGS_ENV = {env_var(name, field): name for name, field in Settings.model_fields.items()}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping"
    return {k: str(v) for k, v in env.items()}


def _resolved(value: str) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default (``${VAR:?..}`` by ``x``)."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "x", value)


def _settings_of(service: dict[str, Any]) -> Settings:
    """The Settings a process in this container builds from its environment."""
    env = {k: _resolved(v) for k, v in _env(service).items() if k in SETTINGS_ENV}
    return Settings(**{SETTINGS_ENV[k]: v for k, v in env.items()})


def _container_port(mapping: str) -> int:
    return int(str(mapping).rsplit(":", 1)[1])


def test_services_present(services: dict[str, Any]) -> None:
    assert set(LONG_RUNNING) | {"model-download"} == set(services)


def test_every_tnllm_env_var_is_a_setting(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for key in _env(service):
            if key.startswith("TNLLM_"):
                assert key in SETTINGS_ENV, f"{name}: {key} is not a Settings field"
        _settings_of(service)  # and the values parse (types, validators)


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert services["model-download"]["restart"] == "no"  # one shot: no health to check


def _healthcheck_url(service: dict[str, Any]) -> tuple[str, list[str]]:
    test = service["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "tnllm.cli.healthcheck"], test
    return test[4], test[5:]


def test_redis_persistence_password_and_ping(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = " ".join(redis["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", '--requirepass "$$REDIS_PASSWORD"'):
        assert flag in command
    assert "REDIS_PASSWORD:?" in redis["environment"]["REDIS_PASSWORD"]  # compose refuses to start without
    assert "-a" in redis["healthcheck"]["test"][1] and "ping" in redis["healthcheck"]["test"][1]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "ports" not in redis  # Redis is not published by default


def test_clients_use_the_password_protected_redis(services: dict[str, Any]) -> None:
    for name, service in services.items():
        url = _env(service).get("TNLLM_REDIS_URL")
        if name in ("redis", "prometheus", "grafana"):
            continue
        assert url is not None, f"{name} has no TNLLM_REDIS_URL"
        parts = urlsplit(_resolved(url))
        assert parts.hostname == "redis" and parts.port == 6379 and parts.password, name


def test_api_port_and_healthcheck_agree(services: dict[str, Any]) -> None:
    api = services["api"]
    settings = _settings_of(api)
    assert settings.port == Settings().port
    assert settings.host == "0.0.0.0"  # inside the container; the published port stays loopback
    assert [_container_port(p) for p in api["ports"]] == [settings.port]
    assert api["ports"][0].startswith("${API_PUBLISH:-127.0.0.1:")
    kind, rest = _healthcheck_url(api)
    assert kind == "http" and urlsplit(rest[0]).port == settings.port and urlsplit(rest[0]).path == "/healthz"
    assert api["command"][:2] == ["tnllm", "api"]


def test_flower_auth_port_and_healthcheck(services: dict[str, Any]) -> None:
    flower = services["flower"]
    env = _env(flower)
    settings = _settings_of(flower)
    assert settings.flower_port == Settings().flower_port
    assert "FLOWER_BASIC_AUTH:?" in env["TNLLM_FLOWER_BASIC_AUTH"]  # required, never defaulted
    flower_check(settings.model_copy(update={"flower_basic_auth": "u:p"}))  # non-loopback + auth: allowed
    assert [_container_port(p) for p in flower["ports"]] == [settings.flower_port]
    kind, rest = _healthcheck_url(flower)
    assert kind == "http" and urlsplit(rest[0]).port == settings.flower_port
    assert urlsplit(rest[0]).path == "/healthcheck"  # Flower answers it without auth


def test_gpu_workers_one_gpu_each(services: dict[str, Any]) -> None:
    seen: set[str] = set()
    for name in GPU_WORKERS:
        worker = services[name]
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        ids = devices[0]["device_ids"]
        assert len(ids) == 1 and ids[0] not in seen, f"{name} must own exactly one GPU of its own"
        seen.update(ids)
        assert name == f"worker-gpu{ids[0]}"
        command = worker["command"]
        assert command[:2] == ["tnllm", "worker"] and f"gpu{ids[0]}@%h" in command
        settings = _settings_of(worker)
        assert settings.device == "cuda" and settings.metrics_host == "0.0.0.0" and settings.metrics_port > 0
        kind, rest = _healthcheck_url(worker)
        assert kind == "http" and urlsplit(rest[0]).port == settings.metrics_port
        assert rest[1:] == ["--expect", "tnllm_engine_slots"]  # served once the engine is loaded
        assert "gpu-workers" in worker["networks"]["default"]["aliases"]
        needs = worker["depends_on"]
        assert needs["model-download"]["condition"] == "service_completed_successfully"
        assert needs["redis"]["condition"] == "service_healthy"
    assert "profiles" not in services["worker-gpu0"]  # one GPU worker by default
    assert services["worker-gpu1"]["profiles"] == ["gpus-2", "gpus-4"]


def test_webhook_worker_healthcheck_names_its_node(services: dict[str, Any]) -> None:
    from tnllm.webhooks.process import NODE_NAME

    hook = services["webhook-worker"]
    kind, rest = _healthcheck_url(hook)
    args = build_parser().parse_args(hook["command"][1:])
    # the node name the worker really takes (tests/webhooks/test_worker.py pings it)
    assert kind == "celery" and rest[:2] == ["--node", NODE_NAME]
    assert args.hostname in (None, NODE_NAME)


def test_commands_are_real_subcommands(services: dict[str, Any]) -> None:
    parser = build_parser()
    for name, service in services.items():
        command = service.get("command")
        if isinstance(command, list) and command[0] == "tnllm":
            assert command[1] in HANDLERS, f"{name}: unknown subcommand {command[1]}"
            parser.parse_args(command[1:])


def test_images_and_dockerfiles(services: dict[str, Any]) -> None:
    api_df = (ROOT / "deploy/Dockerfile.api").read_text()
    worker_df = (ROOT / "deploy/Dockerfile.worker").read_text()
    assert "RUN pip install . " in api_df and "[worker" not in api_df  # no torch in the API image
    assert 'pip install ".[worker,gpu]"' in worker_df and "cuda" in worker_df
    for name in ("api", "flower", "webhook-worker"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile.api", name
    for name in [*GPU_WORKERS, "model-download"]:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile.worker", name
    for df in (api_df, worker_df):
        for line in df.splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"COPY of a missing path: {src}"


def test_model_volume_shared(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    script = services["model-download"]["command"][2]
    assert "exec tnllm download ;;" in script  # ModelScope ids
    # demo: written exactly where resolve_model_path (workers, API) then finds it
    assert "demo) exec tnllm demo-model /data/demo-model ;;" in script
    import tnllm.model.demo
    from tnllm.model.download import resolve_model_path

    # (a present checkpoint: only the folder rule is under test here, not the writer)
    monkeypatch.setattr(tnllm.model.demo, "is_demo_checkpoint", lambda folder: True)
    assert resolve_model_path(Settings(model="demo", data_dir="/data")) == Path("/data/demo-model")
    for name in ["model-download", "api", *GPU_WORKERS]:
        assert any(v.startswith("tnllm-data:/data") for v in services[name]["volumes"]), name
        assert _settings_of(services[name]).data_dir == Path("/data")
    assert services["api"]["volumes"] == ["tnllm-data:/data:ro"]


def test_prometheus_scrapes_the_real_ports(services: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    api_port = _settings_of(services["api"]).port
    assert jobs["tnllm-api"]["static_configs"][0]["targets"] == [f"api:{api_port}"]
    sd = jobs["tnllm-workers"]["dns_sd_configs"][0]
    assert sd["names"] == ["gpu-workers"] and sd["port"] == _settings_of(services["worker-gpu0"]).metrics_port
    assert jobs["flower"]["static_configs"][0]["targets"] == [
        f"flower:{_settings_of(services['flower']).flower_port}"
    ]
    mounted = services["prometheus"]["volumes"][0]
    assert mounted.startswith("./deploy/prometheus.yml:")


def _defined_metric_names() -> set[str]:
    names: set[str] = set()
    for path in ("src/tnllm/api/metrics.py", "src/tnllm/worker/metrics.py"):
        names.update(re.findall(r'"(tnllm_[a-z_]+)"', (ROOT / path).read_text()))
    return names


def dashboard_metric_names() -> set[str]:
    """Base names of every tnllm_* series the Grafana dashboard queries."""
    dash = json.loads((ROOT / "deploy/grafana/dashboards/tnllm.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"tnllm_[a-z_]+", e)}
    return {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in used}


def test_grafana_provisioning_and_dashboard_metrics() -> None:
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    source = ds["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    dash = json.loads((ROOT / "deploy/grafana/dashboards/tnllm.json").read_text())
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == source["uid"]
    used = dashboard_metric_names()
    assert used and used <= _defined_metric_names(), used - _defined_metric_names()
    assert {"tnllm_queue_depth", "tnllm_jobs_finished", "tnllm_engine_active_sequences"} <= used


def test_gpu_host_file_joins_a_central_redis() -> None:
    gpu_host = yaml.safe_load((ROOT / "deploy/docker-compose.gpu-host.yml").read_text())["services"]
    main_file = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(gpu_host) == {"model-download", *GPU_WORKERS}
    assert gpu_host["model-download"]["command"] == main_file["model-download"]["command"]
    published: set[str] = set()
    for name in GPU_WORKERS:
        worker = gpu_host[name]
        for key in _env(worker):
            assert not key.startswith("TNLLM_") or key in SETTINGS_ENV, f"{name}: {key}"
        assert "TNLLM_REDIS_URL:?" in _env(worker)["TNLLM_REDIS_URL"]  # no silent local default
        settings = _settings_of(worker)
        assert settings.metrics_host == "0.0.0.0"
        assert all(_container_port(p) == settings.metrics_port for p in worker["ports"])
        published.update(p.rsplit(":", 1)[0] for p in worker["ports"])
        mine = main_file[name]
        assert worker["deploy"] == mine["deploy"] and worker["command"] == mine["command"]
        assert worker["healthcheck"]["test"] == mine["healthcheck"]["test"]
        assert worker.get("profiles") == mine.get("profiles")
        assert worker["build"]["context"] == ".."  # the file lives in deploy/
    assert len(published) == len(GPU_WORKERS)  # one host port per worker
