"""Every shipped Envoy (or Istio) route table and the agent-authz configuration written for it
agree: each route Envoy sends through ext_authz to an upstream either names its format in its
ext_authz `context_extensions` (validated by tests/envoy_routes.rs) or is classified by
agent-authz's own table (else every request on it is a 403 "no route is configured"), and each
agent-authz route is reachable through Envoy (else it is stale).

The classification is the binary's own (`agent-authz classify`, the matcher `serve` uses), not
a re-implementation here. Pairs:
  envoy/<name>.yaml                   <-> envoy/agent-authz/<name>.yaml
  k8s/base/config/envoy.yaml          <-> k8s/base/config/agent-authz.yaml (the production
                                          overlay replaces only its IdP values)
  istio/gateway/routes.yaml (the VirtualService) <-> istio/authz-service/config/agent-authz.yaml
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stack import REPO, agent_authz_binary  # noqa: E402
from conftest import require_binary  # noqa: E402

EXT_AUTHZ = "envoy.filters.http.ext_authz"
HCM = "envoy.filters.network.http_connection_manager"

ENVOY_FILES = sorted((REPO / "envoy").glob("*.yaml"))
ENVOY_PAIRS = [(p, REPO / "envoy" / "agent-authz" / p.name) for p in ENVOY_FILES] + [
    (REPO / "k8s/base/config/envoy.yaml", REPO / "k8s/base/config/agent-authz.yaml"),
]
ISTIO_ROUTES = REPO / "istio/gateway/routes.yaml"
ISTIO_AUTHZ = REPO / "istio/authz-service/config/agent-authz.yaml"


def ids(pair: tuple[Path, Path]) -> str:
    return f"{pair[0].relative_to(REPO)}<->{pair[1].relative_to(REPO)}"


# --------------------------------------------------------------------- reading route tables
def envoy_matches(config: dict, *, named: bool = False) -> list[dict]:
    """The `match` of every route that goes through ext_authz to an upstream: in a connection
    manager running ext_authz, not disabled per route, not a direct_response; those whose
    context_extensions name their format when `named`, else the others."""
    out = []
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] != HCM:
                    continue
                hcm = f["typed_config"]
                if not any(h["name"] == EXT_AUTHZ for h in hcm.get("http_filters", [])):
                    continue
                for vhost in hcm["route_config"]["virtual_hosts"]:
                    for route in vhost["routes"]:
                        per_route = route.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {})
                        if per_route.get("disabled") or "direct_response" in route:
                            continue
                        context = per_route.get("check_settings", {}).get("context_extensions", {})
                        if ("format" in context) == named:
                            out.append(route["match"])
    return out


def istio_matches(routes_file: Path) -> list[dict]:
    """The VirtualService's `uri` matches of routes with a destination, in Envoy's spelling."""
    out = []
    for doc in yaml.safe_load_all(routes_file.read_text()):
        if not doc or doc.get("kind") != "VirtualService":
            continue
        for http in doc["spec"]["http"]:
            if "route" not in http:
                continue
            for match in http.get("match", []):
                uri = match["uri"]
                out.append({"path": uri["exact"]} if "exact" in uri else dict(uri))
    return out


def authz_prefixes(authz_file: Path) -> list[str]:
    return [r["path_prefix"] for r in yaml.safe_load(authz_file.read_text())["routes"]]


def under(path: str, prefix: str) -> bool:
    """Whether Envoy's `prefix` match takes `path` (a plain string prefix, as Envoy does)."""
    return path.startswith(prefix)


def paths_to_classify(matches: list[dict], prefixes: list[str]) -> list[str]:
    """The request paths that stand for each Envoy route: an exact `path` itself; for a
    `prefix`, every agent-authz route prefix inside it, or the prefix itself when agent-authz
    classifies nothing inside it (then `classify` reports it unclassified)."""
    paths = []
    for match in matches:
        if "path" in match:
            paths.append(match["path"])
        elif "prefix" in match:
            inside = [p for p in prefixes if under(p, match["prefix"])]
            paths.extend(inside or [match["prefix"]])
        else:
            raise AssertionError(f"route match {match} cannot be checked: add it to this test")
    return paths


def classify(authz_file: Path, paths: list[str]) -> tuple[int, dict[str, str]]:
    require_binary(agent_authz_binary(), "cargo build, or set AGENT_AUTHZ_BIN")
    result = subprocess.run(
        [str(agent_authz_binary()), "classify", "--config", str(authz_file), *paths],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert set(lines) == set(paths), result.stdout
    return result.returncode, lines


def unclassified(authz_file: Path, matches: list[dict]) -> list[str]:
    paths = paths_to_classify(matches, authz_prefixes(authz_file))
    if not paths:
        return []
    code, lines = classify(authz_file, sorted(set(paths)))
    missing = [f"{p}: {what}" for p, what in lines.items() if not what.startswith("route=")]
    assert (code == 0) == (not missing), lines
    return missing


def unreachable(authz_file: Path, matches: list[dict]) -> list[str]:
    """agent-authz routes that no Envoy route sends through ext_authz."""

    def reaches(prefix: str) -> bool:
        return any(
            m.get("path") == prefix or under(prefix, m.get("prefix", "\0")) or under(m.get("prefix", "\0"), prefix)
            for m in matches
        )

    return [p for p in authz_prefixes(authz_file) if not reaches(p)]


# ------------------------------------------------------------------------------------ tests
def test_every_envoy_config_ships_its_agent_authz_config():
    assert ENVOY_FILES
    for envoy, authz in ENVOY_PAIRS:
        assert authz.exists(), f"{envoy.relative_to(REPO)} has no agent-authz config at {authz.relative_to(REPO)}"
    shipped = {p.name for p in (REPO / "envoy" / "agent-authz").glob("*.yaml")}
    assert shipped == {p.name for p in ENVOY_FILES}, "an agent-authz config without its Envoy config"


@pytest.mark.parametrize("pair", ENVOY_PAIRS, ids=ids)
def test_agent_authz_config_is_valid(pair):
    require_binary(agent_authz_binary(), "cargo build, or set AGENT_AUTHZ_BIN")
    result = subprocess.run(
        [str(agent_authz_binary()), "validate", "--config", str(pair[1])], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("pair", ENVOY_PAIRS, ids=ids)
def test_every_route_envoy_sends_is_classified(pair):
    envoy, authz = pair
    config = yaml.safe_load(envoy.read_text())
    matches = envoy_matches(config)
    named = envoy_matches(config, named=True)
    assert matches or named, f"{envoy.relative_to(REPO)}: no route goes through ext_authz"
    if envoy.parent == REPO / "envoy":
        assert named and not matches, "shipped envoy/ configs name every route's format"
    assert unclassified(authz, matches) == []
    assert unreachable(authz, matches + named) == []


def test_every_route_the_istio_gateway_sends_is_classified():
    matches = istio_matches(ISTIO_ROUTES)
    assert matches
    assert unclassified(ISTIO_AUTHZ, matches) == []
    assert unreachable(ISTIO_AUTHZ, matches) == []


def test_the_check_catches_a_config_written_for_another_gateway(tmp_path):
    """The mismatch this test exists for: the pod's Envoy (chat and MCP, classified by
    agent-authz's table) behind an agent-authz config that only knows chat."""
    pod = envoy_matches(yaml.safe_load((REPO / "k8s/base/config/envoy.yaml").read_text()))
    config = yaml.safe_load((REPO / "k8s/base/config/agent-authz.yaml").read_text())
    config["routes"] = [r for r in config["routes"] if r["format"] != "mcp"]
    chat_only = tmp_path / "agent-authz.yaml"
    chat_only.write_text(yaml.safe_dump(config))
    missing = unclassified(chat_only, pod)
    assert any(m.startswith("/mcp:") for m in missing), missing
    # and the other way round: a route of the table the Envoy never sends
    config["routes"].append({"path_prefix": "/v1/embeddings", "format": "openai_chat"})
    chat_only.write_text(yaml.safe_dump(config))
    assert "/v1/embeddings" in unreachable(chat_only, pod)
