"""agent-authz's decision log: one JSON line per decision on stdout, joinable with the upstream."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from mcp import MCPError

from clients import mcp_client
from helpers import is_uuid


def test_denied_refund_is_logged_with_tool_arguments_and_effect(stack, tokens):
    before = len(stack.decisions())

    async def go():
        async with mcp_client(stack.mcp_url, tokens["alice"]) as client:
            with pytest.raises(MCPError):
                await client.call_tool("refund", {"ticket_id": "T-100", "amount_cents": 200000})

    asyncio.run(go())
    decision = stack.wait_for_decision(
        lambda d: any(r.get("action") == "tools/call/refund" for r in d.get("resources", [])), after=before
    )
    assert decision["effect"] == "deny"
    assert is_uuid(decision["decision_id"])
    assert decision["principal"]["id"] == "alice"
    assert decision["reason"]
    (resource,) = [r for r in decision["resources"] if r["action"] == "tools/call/refund"]
    assert resource["kind"] == "mcp_server"
    assert resource["id"] == "refund"
    assert resource["effect"] == "deny"
    assert "mcp_server" in resource["policy"]
    assert "refund" in decision["reason"]


def test_allowed_request_log_joins_the_upstreams_decision_id(clean, tokens):
    before = len(clean.decisions())
    r = httpx.post(
        f"{clean.llm_base_url}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {tokens['alice']}"},
    )
    assert r.status_code == 200
    (request,) = clean.llm_received()
    decision_id = request["headers"]["x-agent-authz-decision-id"]
    decision = clean.wait_for_decision(lambda d: d["decision_id"] == decision_id, after=before)
    assert decision["effect"] == "allow"
    assert decision["principal"]["id"] == "alice"
    assert [(r["kind"], r["id"], r["action"], r["effect"]) for r in decision["resources"]] == [
        ("llm_model", "gpt-4o-mini", "invoke", "allow")
    ]
    assert decision["resources"][0]["policy"] == "resource.llm_model.vdefault"


def test_every_decision_line_has_the_documented_keys(stack):
    decisions = stack.decisions()
    assert decisions, "no decision logged yet"
    for d in decisions:
        assert {"decision_id", "principal", "effect", "reason", "resources"} <= set(d), d
        assert d["effect"] in ("allow", "deny")
        for r in d["resources"]:
            assert {"kind", "id", "action", "effect", "policy"} <= set(r), r


def test_cerbos_audit_log_joins_ours_by_request_id_and_call_id(clean, tokens):
    before = len(clean.decisions())
    r = httpx.post(
        f"{clean.llm_base_url}/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {tokens['alice']}"},
    )
    assert r.status_code == 403
    decision = clean.wait_for_decision(lambda d: d.get("effect") == "deny", after=before)
    call_ids = decision.get("cerbos_call_ids") or []
    assert call_ids, decision

    deadline = time.monotonic() + 5
    while True:
        audit = [a for a in clean.cerbos_audit() if a.get("callId") in call_ids]
        if audit or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert audit, "Cerbos' audit log has no entry for agent-authz's call id"
    entry = audit[0]
    request_id = decision.get("request_id")
    assert entry["metadata"]["x-request-id"]["values"] == [request_id]
    assert entry["checkResources"]["inputs"][0]["principal"]["id"] == "alice"
