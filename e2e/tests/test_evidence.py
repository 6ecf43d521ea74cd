"""Evidence on both planes: one denied refund is explained the same way in agent-authz's
decision log, Envoy's access log and Cerbos' audit log; masked values appear in none of them;
metrics and health endpoints agree with the traffic sent."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from stack import Stack

CARD = "4111111111111111"
EMAIL = "alice@example.com"


@pytest.fixture(scope="module")
def masked():
    """A stack that masks a card number in tool arguments and drops the e-mail claim."""
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(
        name="evidence",
        authz_overrides={"audit": {"mask": ["arguments.card_number"], "drop": ["claims.email"]}},
    ) as s:
        yield s


def rpc(stack: Stack, token: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        stack.mcp_url,
        json=body,
        headers={
            "authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-11-25",
            **headers,
        },
        timeout=10,
    )


def wait_for(read, predicate, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        found = [x for x in read() if predicate(x)]
        if found or time.monotonic() > deadline:
            assert found, f"no {what}"
            return found[-1]
        time.sleep(0.1)


def envoy_access_log(stack: Stack) -> list[dict]:
    return [json.loads(l) for l in stack.log_path("envoy").read_text().splitlines() if l.startswith("{")]


def test_a_denied_refund_is_explained_in_all_three_logs_and_masked_everywhere(masked):
    token = masked.token_for("alice", email=EMAIL)
    before = len(masked.decisions())
    call = {
        "jsonrpc": "2.0",
        "id": 31,
        "method": "tools/call",
        "params": {"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 200000, "card_number": CARD}},
    }
    r = rpc(masked, token, call)
    assert r.status_code == 200
    assert r.json()["error"]["code"] == 403 and r.json()["id"] == 31
    assert masked.mcp_executions() == [], "the refund never reached the MCP server"

    # 1. agent-authz's decision log: principal, the arguments judged, effect, policy, reason.
    ours = masked.wait_for_decision(lambda d: d.get("path") == "/mcp" and d.get("effect") == "deny", after=before)
    (refund,) = [x for x in ours["resources"] if x["action"] == "tools/call/refund"]
    assert ours["principal"]["id"] == "alice"
    assert refund["attr"]["arguments"]["amount_cents"] == 200000
    assert refund["attr"]["arguments"]["card_number"] == "****"
    assert refund["effect"] == "deny" and refund["policy"] == "resource.mcp_server.vdefault"
    assert "200000" in ours["reason"] and "100000" in ours["reason"], ours["reason"]

    # 2. Envoy's access log: the same request, attributed to the principal, with the effect.
    access = wait_for(
        lambda: envoy_access_log(masked),
        lambda l: l.get("request_id") == ours["request_id"],
        "access-log line for the request",
    )
    assert access["principal"] == "alice" and access["effect"] == "deny"
    assert access["decision_id"] == ours["decision_id"]
    assert access["response_code_details"] == "ext_authz_denied"

    # 3. Cerbos' audit log: the same request id, the same call id.
    audit = wait_for(
        masked.cerbos_audit,
        lambda a: a.get("callId") in ours["cerbos_call_ids"],
        "Cerbos audit entry",
    )
    assert audit["metadata"]["x-request-id"]["values"] == [ours["request_id"]]
    (cerbos_input,) = audit["checkResources"]["inputs"]
    assert cerbos_input["requestId"] == ours["request_id"]
    assert cerbos_input["resource"]["attr"]["arguments"]["card_number"] == "****"

    # Masked and dropped values never appear in any of the three logs.
    logs = {
        "decision log": masked.procs["agent_authz"].stdout_log.read_text()
        + masked.log_path("agent_authz").read_text(),
        "envoy": masked.log_path("envoy").read_text(),
        "cerbos": json.dumps(masked.cerbos_audit()),
    }
    for name, text in logs.items():
        assert CARD not in text, f"card number in the {name}"
        assert EMAIL not in text, f"dropped e-mail claim in the {name}"
        assert token not in text, f"bearer token in the {name}"


def scrape(stack: Stack) -> str:
    r = httpx.get(f"http://127.0.0.1:{stack.ports['authz_admin']}/metrics", timeout=5)
    assert r.status_code == 200
    return r.text


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_metrics_count_the_traffic_sent(masked):
    before = scrape(masked)
    token = masked.token_for("alice")
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for model, status in [("gpt-4o-mini", 200), ("gpt-4o-mini", 200), ("gpt-4o", 403), ("gpt-4o", 403), ("gpt-4o", 403)]:
        r = httpx.post(f"{masked.llm_base_url}/chat/completions", json={**chat, "model": model},
                       headers={"authorization": f"Bearer {token}"})
        assert r.status_code == status
    r = httpx.post(f"{masked.llm_base_url}/chat/completions", json={**chat, "model": "gpt-4o-mini"})
    assert r.status_code == 401
    after = scrape(masked)

    def delta(name: str, **labels: str) -> float:
        return counter(after, name, **labels) - counter(before, name, **labels)

    route = {"route": "openai_chat", "format": "openai_chat"}  # the Envoy route's name
    assert delta("agent_authz_checks_total", effect="allow", **route) == 2
    assert delta("agent_authz_checks_total", effect="deny", refusal="policy_denied", **route) == 3
    assert delta("agent_authz_checks_total", effect="deny", refusal="unauthenticated", **route) == 1
    assert delta("agent_authz_decisions_total", kind="llm_model", action="invoke", effect="deny") == 3
    assert delta("agent_authz_decisions_total", kind="llm_model", action="invoke", effect="allow") == 2
    assert counter(after, "agent_authz_cerbos_request_duration_seconds_count") - counter(
        before, "agent_authz_cerbos_request_duration_seconds_count"
    ) == 5, "one Cerbos call per judged request; none for the unauthenticated one"
    assert 'agent_authz_build_info{version="' in after


def test_health_endpoints_follow_cerbos(masked):
    admin = f"http://127.0.0.1:{masked.ports['authz_admin']}"
    assert httpx.get(f"{admin}/healthz").status_code == 200
    assert httpx.get(f"{admin}/readyz").status_code == 200
    masked.stop_cerbos()
    try:
        r = httpx.get(f"{admin}/readyz", timeout=5)
        assert r.status_code == 503 and "cerbos" in r.text
        assert httpx.get(f"{admin}/healthz").status_code == 200, "alive, just not ready"
    finally:
        masked.start_cerbos()
    deadline = time.monotonic() + 20
    while httpx.get(f"{admin}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "not ready again after Cerbos came back"
        time.sleep(0.2)
