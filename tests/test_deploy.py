"""Structural checks of the deployment files: Dockerfile, docker-compose.yml, Prometheus, Grafana
and Kubernetes manifests. No Docker or cluster needed: these read the files and compare them with
the code they deploy (Settings env vars, registered metrics, topics.yaml).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from app.topics import load_topics

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "riskstream.json"
K8S = ROOT / "deploy" / "k8s"

RISKSTREAM_SERVICES = ("topics-init", "worker", "simulator", "enforcement")
SETTINGS_ENV = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
DEFAULTS = Settings()


# -- helpers ----------------------------------------------------------------------------------
def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...] form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def image_is_pinned(image: str) -> bool:
    """name:tag (or @sha256 digest) with a tag other than latest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag (a registry port is not a tag)
        return False
    return tag != "latest" and bool(re.fullmatch(r"[\w][\w.-]{0,127}", tag))


def published_ports(service: dict) -> list[dict]:
    """Normalise short ("127.0.0.1:9090:9090") and long port syntax to dicts."""
    out = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            out.append({"host_ip": p.get("host_ip", ""), "published": p.get("published"),
                        "target": p.get("target")})
            continue
        parts = str(p).split(":")
        if len(parts) == 3:
            out.append({"host_ip": parts[0], "published": parts[1], "target": parts[2]})
        elif len(parts) == 2:
            out.append({"host_ip": "", "published": parts[0], "target": parts[1]})
        else:
            out.append({"host_ip": "", "published": None, "target": parts[0]})
    return out


def k8s_docs() -> dict[str, list[dict]]:
    return {p.name: load_all_yaml(p) for p in sorted(K8S.glob("*.yaml"))}


def k8s_kind(kind: str) -> list[dict]:
    return [d for docs in k8s_docs().values() for d in docs if d.get("kind") == kind]


def the(kind: str) -> dict:
    found = k8s_kind(kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def configmap_data() -> dict[str, str]:
    return {k: str(v) for k, v in (the("ConfigMap").get("data") or {}).items()}


def ad_impressions_partitions() -> int:
    return next(t.partitions for t in load_topics() if t.name == "ad-impressions")


# -- Dockerfile -------------------------------------------------------------------------------
def test_dockerfile_base_user_entrypoint():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    images = [args.get(f[2:-1], f) if f.startswith("${") else f for f in froms]
    assert images and all(i == "python:3.11.7-slim-bookworm" for i in images), images
    assert re.search(r"^RUN\s+pip install \.", text, re.M), "installs the project with pip"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as non-root"
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])", text, re.M)
    cmd = re.search(r"^CMD\s+(\[.*\])", text, re.M)
    assert entry and json.loads(entry.group(1)) == ["riskstream"]
    assert cmd and json.loads(cmd.group(1)) == ["worker"]


def test_dockerfile_ships_data_files_the_code_reads():
    """pyproject packages Python modules only; app/topics.py and riskstream/alerts.py read
    topics.yaml and schemas/ next to the packages, so the image must put them there."""
    text = DOCKERFILE.read_text()
    for src in ("topics.yaml", "schemas"):
        assert re.search(rf"^COPY\s+{src}\s", text, re.M), f"{src} not copied"
        assert f'"$site/{src}"' in text, f"{src} not placed beside the installed packages"
    for pkg in ("app", "agents", "models", "riskstream"):
        assert re.search(rf"^COPY\s+{pkg}\s", text, re.M), f"package {pkg} not copied"


# -- docker compose ---------------------------------------------------------------------------
def test_compose_has_the_services(services):
    expected = {"kafka", "topics-init", "worker", "simulator", "enforcement", "prometheus",
                "grafana"}
    assert expected <= set(services)


def test_compose_images_pinned(services):
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name}: no image"
        assert image_is_pinned(image), f"{name}: image {image!r} is not pinned to a version"
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    for name in RISKSTREAM_SERVICES:
        assert services[name]["image"] == services["worker"]["image"]
        assert services[name].get("build"), f"{name}: image is built from this repository"


def test_compose_commands(services):
    assert command_of(services["topics-init"])[:2] == ["topics", "apply"]
    assert command_of(services["worker"])[:1] == ["worker"]
    assert command_of(services["simulator"])[:1] == ["simulate"]
    assert command_of(services["enforcement"])[:2] == ["alerts", "follow"]


def test_compose_commands_parse_with_the_real_cli(services):
    from app.cli import build_parser

    parser = build_parser()
    for name in RISKSTREAM_SERVICES:
        args = parser.parse_args(command_of(services[name]))  # SystemExit on a bad flag
        assert callable(args.func)
    sim = parser.parse_args(command_of(services["simulator"]))
    assert sim.advertisers == 500 and sim.max_seconds == 86400


def test_compose_kafka_kraft_single_node(services):
    kafka = services["kafka"]
    env = env_of(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_NODE_ID"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    listener_names = {entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    protocol_map = dict(e.split(":") for e in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listener_names <= set(protocol_map)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listener_names
    assert kafka.get("healthcheck", {}).get("test")


def test_compose_dependencies(services):
    def cond(svc: str, dep: str) -> str:
        return services[svc]["depends_on"][dep]["condition"]

    assert cond("topics-init", "kafka") == "service_healthy"
    for name in ("worker", "simulator", "enforcement"):
        assert cond(name, "topics-init") == "service_completed_successfully"


def test_compose_worker_is_scalable(services):
    worker = services["worker"]
    assert not worker.get("ports"), "a fixed host port breaks `--scale worker=N`"
    assert "container_name" not in worker
    env = env_of(worker)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["RISKSTREAM_WEB_HOST"] == "0.0.0.0"
    assert env.get("RISKSTREAM_DATA_DIR")


def test_compose_worker_healthcheck_is_readyz(services):
    worker = services["worker"]
    test = worker["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else test
    port = env_of(worker).get("RISKSTREAM_WEB_PORT", str(DEFAULTS.web_port))
    assert "urllib" in text
    assert f"http://127.0.0.1:{port}/readyz" in text


def test_compose_env_names_are_settings(services):
    for name in RISKSTREAM_SERVICES:
        unknown = set(env_of(services[name])) - set(SETTINGS_ENV)
        assert not unknown, f"{name}: not settings of app/settings.py: {sorted(unknown)}"


def test_compose_env_values_parse(services):
    for name in RISKSTREAM_SERVICES:
        env = {k: v for k, v in env_of(services[name]).items() if "${" not in v}
        Settings.from_env(env)  # SettingsError on a value of the wrong type


def test_compose_published_ports_are_loopback(services):
    for name, svc in services.items():
        for port in published_ports(svc):
            assert port["host_ip"] == "127.0.0.1", f"{name}: {port} is not bound to 127.0.0.1"


def test_compose_mounts_exist(services):
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: mount source {src} missing"


# -- Prometheus -------------------------------------------------------------------------------
def test_prometheus_scrapes_worker_port(services):
    config = load_yaml(PROMETHEUS)
    worker_port = int(env_of(services["worker"]).get("RISKSTREAM_WEB_PORT", DEFAULTS.web_port))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_jobs = [j for j in jobs.values()
                   if any("worker" in n for sd in j.get("dns_sd_configs", [])
                          for n in sd.get("names", []))]
    assert worker_jobs, "no scrape job discovers the worker service"
    for job in worker_jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job["dns_sd_configs"]:
            assert sd["names"] == ["worker"] and sd["type"] == "A"
            assert sd["port"] == worker_port


def test_prometheus_service_mounts_this_config(services):
    mounts = [v.split(":") for v in services["prometheus"]["volumes"] if isinstance(v, str)]
    assert any(Path(src) == Path("./deploy/prometheus/prometheus.yml") and
               dst == "/etc/prometheus/prometheus.yml" for src, dst, *_ in mounts)
    # the alerting rules, where the config's rule_files looks for them (next to it)
    for rule_file in load_yaml(PROMETHEUS)["rule_files"]:
        assert any(Path(src) == PROMETHEUS.parent.relative_to(ROOT) / rule_file
                   and dst == f"/etc/prometheus/{rule_file}" for src, dst, *_ in mounts), rule_file


def test_alerting_rules_pass_promtool_and_their_unit_tests():
    """``promtool check rules`` (syntax, templates) and ``promtool test rules`` over
    deploy/prometheus/alerts_test.yml: each alert fires on the series meant to raise it, with
    its labels and annotations, and stays quiet on the healthy ones."""
    from tests.conftest import require_tool

    promtool = require_tool("promtool", "prometheus")
    rules = PROMETHEUS.parent / "alerts.yml"
    for args in (["check", "rules", rules.name], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=PROMETHEUS.parent, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "SUCCESS" in done.stdout


def test_alerting_rules_use_only_series_the_worker_exports():
    _kinds, series = registered_series()
    text = (PROMETHEUS.parent / "alerts.yml").read_text()
    used = set(METRIC_RE.findall(text))
    assert used, "no riskstream series in the rules"
    assert used <= series, sorted(used - series)
    # every rule has an action for whoever is paged
    for rule in load_yaml(PROMETHEUS.parent / "alerts.yml")["groups"][0]["rules"]:
        assert rule["annotations"].get("action"), rule["alert"]


# -- Grafana ----------------------------------------------------------------------------------
METRIC_RE = re.compile(r"riskstream_[a-z_]+")


def registered_series() -> tuple[dict[str, str], set[str]]:
    """(base metric name -> type, every series name Prometheus can hold for them).

    Collectors store counters without ``_total`` in ``_name``; the exposition adds ``_total``
    and ``_created`` (counters) or ``_bucket``/``_sum``/``_count``/``_created`` (histograms)."""
    from prometheus_client import CollectorRegistry

    from app.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    kinds: dict[str, str] = {}
    for collector in registry._collector_to_names:  # noqa: SLF001 - the registered collectors
        kinds[collector._name] = collector._type  # noqa: SLF001
    series: set[str] = set()
    for name, kind in kinds.items():
        if kind == "counter":
            series |= {f"{name}_total", f"{name}_created"}
        elif kind == "histogram":
            series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        else:
            series.add(name)
    return kinds, series


def base_name(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_created", "_total"):
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


def panel_exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel.get("targets", []) if t.get("expr")]


def dashboard_queries(dashboard: dict) -> list[str]:
    exprs = [e for p in all_panels(dashboard) for e in panel_exprs(p)]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
    return exprs


def test_registered_series_helper_sees_every_metric():
    kinds, series = registered_series()
    assert kinds["riskstream_events_consumed"] == "counter"
    assert kinds["riskstream_batch_processing_seconds"] == "histogram"
    assert "riskstream_events_consumed_total" in series
    assert "riskstream_batch_processing_seconds_bucket" in series
    assert "riskstream_consumer_lag_messages" in series


def test_dashboard_queries_use_only_registered_metrics(dashboard):
    kinds, series = registered_series()
    used = {m for expr in dashboard_queries(dashboard) for m in METRIC_RE.findall(expr)}
    assert used
    unknown = {m for m in used if base_name(m) not in kinds}
    assert not unknown, f"not defined in app/metrics.py: {sorted(unknown)}"
    misnamed = used - series
    assert not misnamed, ("use the exposed series name (counters end in _total, histograms "
                          f"in _bucket/_sum/_count): {sorted(misnamed)}")


def test_dashboard_shows_every_metric(dashboard):
    kinds, _ = registered_series()
    used = {base_name(m) for e in dashboard_queries(dashboard) for m in METRIC_RE.findall(e)}
    assert set(kinds) - used == set(), "metrics with no panel"


def test_dashboard_panels_cover_the_topics(dashboard):
    panels = [p for p in all_panels(dashboard) if p.get("type") != "row"]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for p in panels for e in panel_exprs(p))

    assert has(r"sum by \(topic\) \(rate\(riskstream_events_consumed_total"), "throughput"
    assert has(r"sum by \(reason\) .*riskstream_events_invalid_total"), "invalid by reason"
    assert has(r"riskstream_events_late_total"), "late events"
    assert has(r"by \(topic, partition\) \(riskstream_consumer_lag_messages"), "lag/partition"
    for q in ("0.5", "0.99"):
        assert has(rf"histogram_quantile\({q}, sum by \(le\) \(rate\("
                   r"riskstream_batch_processing_seconds_bucket"), f"batch latency p{q}"
    assert has(r"histogram_quantile\(0.99, .*riskstream_event_to_alert_seconds_bucket"), "e2e"
    assert has(r"riskstream_window_close_lag_seconds"), "window close lag"
    assert has(r"by \(severity, mode\) \(rate\(riskstream_alerts_total"), "alerts"
    assert has(r"riskstream_alerts_suppressed_total"), "suppressed"
    for metric in ("riskstream_active_advertisers", "riskstream_model_state_bytes",
                   "riskstream_model_config_version", "riskstream_checkpoints_total",
                   "riskstream_rebalances_total", "riskstream_ready"):
        assert has(metric), metric
    rows = {p["title"].lower() for p in all_panels(dashboard) if p.get("type") == "row"}
    for topic in ("throughput", "lag", "latency", "alerts", "models", "rebalances"):
        assert any(topic in r for r in rows), f"no dashboard row for {topic}"


def test_dashboard_is_well_formed(dashboard):
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in all_panels(dashboard):
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "prometheus"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_grafana_provisioning(services):
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    prov = load_yaml(GRAFANA / "provisioning" / "dashboards" / "riskstream.yml")
    path = prov["providers"][0]["options"]["path"]
    grafana = services["grafana"]
    mounts = {dst: src for src, dst, *_ in (v.split(":") for v in grafana["volumes"]
                                            if isinstance(v, str))}
    assert Path(mounts[path]) == Path("./deploy/grafana/dashboards")
    assert Path(mounts["/etc/grafana/provisioning"]) == Path("./deploy/grafana/provisioning")
    env = env_of(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# -- Kubernetes -------------------------------------------------------------------------------
def test_k8s_manifests_are_namespace_less():
    for name, docs in k8s_docs().items():
        for doc in docs:
            assert "namespace" not in doc.get("metadata", {}), f"{name}: hard-coded namespace"


def test_k8s_configmap_keys_are_settings():
    data = configmap_data()
    unknown = set(data) - set(SETTINGS_ENV)
    assert not unknown, f"not settings of app/settings.py: {sorted(unknown)}"
    secrets = {env for env, f in SETTINGS_ENV.items() if f.metadata["secret"]}
    assert not secrets & set(data), "secrets belong in a Secret, not the ConfigMap"
    Settings.from_env(data)  # every value parses
    assert data["RISKSTREAM_WEB_HOST"] == "0.0.0.0"


def test_k8s_deployment():
    dep = the("Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 60
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert image_is_pinned(container["image"])
    assert container.get("args", [])[:1] == ["worker"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    web_port = int(configmap_data().get("RISKSTREAM_WEB_PORT", DEFAULTS.web_port))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def probe_port(probe: dict) -> int:
        port = probe["httpGet"]["port"]
        return ports[port] if isinstance(port, str) else port

    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probe_port(container["livenessProbe"]) == web_port
    assert probe_port(container["readinessProbe"]) == web_port

    env_from = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert env_from == [the("ConfigMap")["metadata"]["name"]]
    env = {e["name"]: e for e in container.get("env", [])}
    # every variable is a setting, but for the pod IP the advertised URL is built from
    assert set(env) - {"POD_IP"} <= set(SETTINGS_ENV)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["RISKSTREAM_WEB_ADVERTISED_URL"]["value"] == f"http://$(POD_IP):{web_port}"
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]

    res = container["resources"]
    assert res["requests"]["cpu"] in ("1", 1, "1000m")
    assert res["requests"]["memory"] == "1Gi" and res["limits"]["memory"] == "1Gi"
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert str(Path(configmap_data()["RISKSTREAM_DATA_DIR"]).parent) in mounts or \
        configmap_data()["RISKSTREAM_DATA_DIR"] in mounts, "data dir must be writable"


def test_k8s_service_is_headless_metrics():
    svc = the("Service")
    dep = the("Deployment")
    assert svc["spec"]["clusterIP"] == "None"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in names or p["targetPort"] == 6066 for p in svc["spec"]["ports"])


def test_k8s_keda_scaledobject():
    so = the("ScaledObject")
    dep = the("Deployment")
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert spec["minReplicaCount"] == 1
    assert spec["maxReplicaCount"] == ad_impressions_partitions()
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    data = configmap_data()
    app_id = data.get("RISKSTREAM_APP_ID", DEFAULTS.app_id)
    assert meta["consumerGroup"] == app_id == "riskstream"
    assert meta["topic"] == data.get("RISKSTREAM_TOPIC_PREFIX", "") + "ad-impressions"
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("bootstrapServers") or meta.get("bootstrapServersFromEnv") in data
    auth = trigger.get("authenticationRef", {}).get("name")
    if auth:
        assert auth in {t["metadata"]["name"] for t in k8s_kind("TriggerAuthentication")}


def test_k8s_topics_job():
    job = the("Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("OnFailure", "Never")
    (container,) = spec["containers"]
    assert container["args"][:2] == ["topics", "apply"]
    assert image_is_pinned(container["image"])
    assert container["image"] == the("Deployment")["spec"]["template"]["spec"]["containers"][0][
        "image"]
    from app.cli import build_parser

    build_parser().parse_args(container["args"])
