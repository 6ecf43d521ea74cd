"""Every shipped Envoy config (envoy/*.yaml) as an edge proxy: answers that stream for longer
than Envoy's default 15 s route timeout get through, and the caller's credentials never reach
an upstream.

The streams run through all configs at once (one slow upstream, e2e/upstreams/slow_stream.py,
behind two stacks: agent-gateway.yaml with llm-gateway.yaml and mcp-gateway.yaml beside it on
the same agent-authz, and agent-gateway-jwt-authn.yaml), so the suite pays ~17 s once.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest
import yaml

from stack import REPO, Stack, http_get

# A stream of STREAM_DELTAS events, one every STREAM_INTERVAL seconds: longer than Envoy's
# default route timeout (15 s), which used to cut every LLM answer in the shipped configs.
STREAM_DELTAS = 17
STREAM_INTERVAL = 1.0
ENVOY_DEFAULT_ROUTE_TIMEOUT = 15.0

CALLER_CREDENTIALS = {
    "proxy-authorization": "Basic Y2FsbGVyOnNlY3JldA==",
    "cookie": "session=caller-session",
    "x-api-key": "sk-caller-anthropic",
    "api-key": "caller-azure-key",
    "x-goog-api-key": "caller-gemini-key",
}


def shipped_configs() -> list[str]:
    return sorted(p.name for p in (REPO / "envoy").glob("*.yaml") if "static_resources" in p.read_text())


def upstreams_of(config: str) -> list[str]:
    """Which upstreams (llm, mcp) a config routes to."""
    clusters = {c["name"] for c in yaml.safe_load((REPO / "envoy" / config).read_text())["static_resources"]["clusters"]}
    return [kind for kind in ("llm", "mcp") if f"{kind}_upstream" in clusters]


@dataclass
class Gateway:
    config: str
    url: str
    stack: Stack


@pytest.fixture(scope="module")
def gateways():
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="edge", upstream_script="slow_stream.py") as plain, Stack(
        name="edge-jwt",
        envoy_config="agent-gateway-jwt-authn.yaml",
        identity_source="envoy_jwt_authn",
        upstream_script="slow_stream.py",
    ) as jwt:
        found = {"agent-gateway.yaml": Gateway("agent-gateway.yaml", plain.envoy_url, plain),
                 "agent-gateway-jwt-authn.yaml": Gateway("agent-gateway-jwt-authn.yaml", jwt.envoy_url, jwt)}
        for config in shipped_configs():
            if config not in found:
                template = (REPO / "envoy" / config).read_text()
                found[config] = Gateway(config, plain.start_extra_envoy(config.removesuffix(".yaml"), template), plain)
        assert sorted(found) == shipped_configs()
        yield found


def request_for(kind: str, gw: Gateway, *, deltas: int, interval: float, extra: dict[str, str] | None = None):
    headers = {"authorization": f"Bearer {gw.stack.token_for('alice')}",
               "x-slow-deltas": str(deltas), "x-slow-interval": str(interval), **(extra or {})}
    if kind == "llm":
        body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "take your time"}]}
        return f"{gw.url}/v1/chat/completions", headers, body
    headers.update({"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"})
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "lookup_ticket", "arguments": {"ticket_id": "T-100"}}}
    return f"{gw.url}/mcp", headers, body


@dataclass
class Streamed:
    status: int
    events: list[tuple[float, str]]  # (seconds since the request, data)
    error: str | None = None


def stream(url: str, headers: dict, body: dict) -> Streamed:
    start = time.monotonic()
    events: list[tuple[float, str]] = []
    try:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=httpx.Timeout(10.0, read=30.0)) as r:
            if r.status_code != 200:
                return Streamed(r.status_code, [], r.read().decode(errors="replace"))
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append((time.monotonic() - start, line[len("data: "):]))
            return Streamed(200, events)
    except httpx.HTTPError as e:
        return Streamed(-1, events, f"{type(e).__name__}: {e}")


def test_every_shipped_config_is_covered(gateways):
    assert sorted(gateways) == shipped_configs()
    assert all(upstreams_of(c) for c in shipped_configs())


def test_slow_streams_pass_through_every_shipped_config(gateways):
    jobs = [(gw.config, kind) for gw in gateways.values() for kind in upstreams_of(gw.config)]
    assert {kind for _, kind in jobs} == {"llm", "mcp"}
    results: dict[tuple[str, str], Streamed] = {}

    def run(config: str, kind: str) -> None:
        url, headers, body = request_for(kind, gateways[config], deltas=STREAM_DELTAS, interval=STREAM_INTERVAL)
        results[(config, kind)] = stream(url, headers, body)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    failures = []
    for job in jobs:
        got = results.get(job)
        if got is None or got.status != 200 or got.error:
            last = f"{got.events[-1][0]:.1f}s" if got and got.events else "-"
            failures.append(f"{job}: status {got and got.status}, {got and len(got.events)} events "
                            f"(last at {last}), {got and got.error}")
            continue
        times = [t for t, _ in got.events]
        last = got.events[-1][1] if got.events else ""
        complete = last == "[DONE]" if job[1] == "llm" else json.loads(last).get("result") is not None
        # All events arrived, the last one after Envoy's default route timeout, each soon after
        # it was sent (streamed, not buffered until the end).
        if len(got.events) < STREAM_DELTAS + 1 or not complete:
            failures.append(f"{job}: incomplete after {times[-1] if times else 0:.1f}s: {got.events[-2:]}")
        elif times[-1] <= ENVOY_DEFAULT_ROUTE_TIMEOUT:
            failures.append(f"{job}: ended at {times[-1]:.1f}s, not a slow stream")
        elif times[0] > 5 * STREAM_INTERVAL or max(b - a for a, b in zip(times, times[1:])) > 5 * STREAM_INTERVAL:
            failures.append(f"{job}: events were held back: {[round(t, 1) for t in times]}")
    assert not failures, "\n".join(failures)


def received(gw: Gateway, kind: str, marker: str) -> dict:
    status, body = http_get(f"http://127.0.0.1:{gw.stack.ports[kind]}/_received")
    assert status == 200
    found = [r for r in json.loads(body) if r["headers"].get("x-test-id") == marker]
    assert len(found) == 1, f"the {kind} upstream received {len(found)} requests marked {marker}"
    return found[0]


def test_caller_credentials_never_reach_an_upstream(gateways):
    """The caller's token (audience: the gateway) and any other credential it sent stay at the
    gateway: the MCP spec forbids token passthrough, and a provider key the caller sends would
    bypass the gateway's own. The gateway's own identity header (the verified principal) does
    reach the upstream."""
    for gw in gateways.values():
        for kind in upstreams_of(gw.config):
            marker = uuid.uuid4().hex
            url, headers, body = request_for(kind, gw, deltas=1, interval=0,
                                             extra={**CALLER_CREDENTIALS, "x-test-id": marker})
            got = stream(url, headers, body)
            assert got.status == 200, (gw.config, kind, got)
            seen = received(gw, kind, marker)["headers"]
            leaked = sorted({"authorization", *CALLER_CREDENTIALS} & set(seen))
            assert not leaked, f"{gw.config} forwards {leaked} to the {kind} upstream"
            token = headers["authorization"].split()[1]
            assert token not in json.dumps(seen)
            assert seen.get("x-agent-authz-principal") == "alice", (gw.config, kind, seen)


def test_an_upstream_credential_is_injected_per_route(gateways):
    """The documented recipe (envoy/agent-gateway.yaml, above request_headers_to_remove): the
    route adds the upstream's own key from the environment, after the caller's was removed."""
    gw = gateways["agent-gateway.yaml"]
    config = yaml.safe_load((REPO / "envoy" / gw.config).read_text())
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    (llm,) = [r for r in vhost["routes"] if r["name"] == "openai_chat"]
    llm["request_headers_to_add"] = [{"header": {"key": "authorization", "value": "Bearer %ENVIRONMENT(LLM_API_KEY)%"},
                                      "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    url = gw.stack.start_extra_envoy("edge-injected", yaml.safe_dump(config, sort_keys=False),
                                     env={"LLM_API_KEY": "sk-upstream-own-key"})
    marker = uuid.uuid4().hex
    target, headers, body = request_for("llm", Gateway(gw.config, url, gw.stack), deltas=1, interval=0,
                                        extra={"x-test-id": marker})
    assert stream(target, headers, body).status == 200
    seen = received(gw, "llm", marker)["headers"]
    assert seen["authorization"] == "Bearer sk-upstream-own-key"


def test_overload_manager_and_circuit_breakers_are_live(gateways):
    """The overload manager's monitors run in the real binary (the fixed-heap one needs
    tcmalloc), and the agent_authz cluster's circuit breakers are the configured ones."""
    for gw in {id(g.stack): g for g in gateways.values()}.values():
        status, body = http_get(f"{gw.stack.envoy_admin_url}/stats?filter=^overload\\.")
        text = body.decode()
        assert status == 200
        for monitor in ("fixed_heap", "global_downstream_max_connections"):
            assert f"overload.envoy.resource_monitors.{monitor}.failed_updates: 0" in text, (gw.config, text)
        pressure = float(re.search(r"fixed_heap\.pressure: (\d+)", text).group(1))
        assert pressure < 90, f"{gw.config}: heap pressure {pressure}% at rest"
        status, body = http_get(f"{gw.stack.envoy_admin_url}/clusters")
        assert "agent_authz::default_priority::max_requests::20000" in body.decode()
