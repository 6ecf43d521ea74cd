"""Identity: no valid token, no entry; and identity headers cannot be forged."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from clients import openai_client
from helpers import is_uuid
from stack import new_rsa_key

CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
MCP_BODY = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


def bad_tokens(stack) -> dict[str, str | None]:
    claims = {"assigned_ticket": "T-100", "refund_limit_cents": 100000, "allowed_models": ["gpt-4o-mini"]}
    return {
        "no-token": None,
        "garbage": "not-a-jwt",
        "other-key": stack.mint_token("alice", ["support"], key=new_rsa_key(), **claims),
        "expired": stack.mint_token("alice", ["support"], exp_in=-600, **claims),
        "not-yet-valid": stack.mint_token("alice", ["support"], nbf=int(time.time()) + 600, exp_in=1200, **claims),
        "wrong-audience": stack.mint_token("alice", ["support"], aud="some-other-api", **claims),
        "wrong-issuer": stack.mint_token("alice", ["support"], iss="https://evil.example", **claims),
        "unknown-kid": stack.mint_token("alice", ["support"], kid="no-such-key", **claims),
    }


CASES = ["no-token", "garbage", "other-key", "expired", "not-yet-valid", "wrong-audience", "wrong-issuer", "unknown-kid"]


def auth_headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


@pytest.mark.parametrize("case", CASES)
def test_llm_route_rejects_a_bad_token_with_401(clean, case):
    token = bad_tokens(clean)[case]
    r = httpx.post(f"{clean.llm_base_url}/chat/completions", json=CHAT_BODY, headers=auth_headers(token))
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    error = r.json()["error"]
    assert {"message", "type", "code"} <= set(error)
    assert clean.llm_received() == []


@pytest.mark.parametrize("case", CASES)
def test_mcp_route_rejects_a_bad_token_with_401(clean, case):
    token = bad_tokens(clean)[case]
    requests_before = len(clean.mcp_received())
    executions_before = len(clean.mcp_executions())
    r = httpx.post(clean.mcp_url, json=MCP_BODY, headers={**MCP_HEADERS, **auth_headers(token)})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    assert body["jsonrpc"] == "2.0"
    # Identity is checked before the body is read, so the id may be null (JSON-RPC allows that
    # when the id was not determined); the SDK still fails the pending request at once.
    assert body["id"] in (1, None)
    assert isinstance(body["error"]["code"], int)
    assert body["error"]["message"]
    # the same data shape as a policy denial's, so a client reads both the same way
    data = body["error"]["data"]
    assert set(data) == {"refusal", "action", "resource", "reason"}, data
    assert data["refusal"] == "unauthenticated" and data["reason"], data
    assert clean.mcp_received()[requests_before:] == []
    assert clean.mcp_executions()[executions_before:] == []
    assert clean.llm_received() == []


@pytest.mark.parametrize("token", [None, "garbage"], ids=["no-token", "garbage"])
def test_the_mcp_sdk_fails_fast_without_a_valid_token(clean, token):
    import asyncio
    import time

    from clients import mcp_client
    from clients import find_mcp_error

    requests_before = len(clean.mcp_received())

    async def go():
        async with mcp_client(clean.mcp_url, token) as client:
            await client.list_tools()

    started = time.monotonic()
    with pytest.raises(BaseException) as caught:
        asyncio.run(go())
    assert time.monotonic() - started < 10, "the client should fail at once, not at a read timeout"
    err = find_mcp_error(caught.value)
    assert err is not None, repr(caught.value)
    assert err.code == 401
    assert clean.mcp_received()[requests_before:] == []


def test_the_openai_sdk_sees_an_authentication_error(clean):
    client = openai_client(clean.llm_base_url, "garbage")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**CHAT_BODY)
    assert clean.llm_received() == []


def test_a_token_in_the_query_string_is_not_read(clean, tokens):
    r = httpx.post(f"{clean.llm_base_url}/chat/completions?access_token={tokens['alice']}", json=CHAT_BODY)
    assert r.status_code == 401
    assert clean.llm_received() == []


def test_forged_identity_headers_never_reach_the_upstream(clean, tokens):
    r = httpx.post(
        f"{clean.llm_base_url}/chat/completions",
        json=CHAT_BODY,
        headers={
            "authorization": f"Bearer {tokens['alice']}",
            "x-agent-authz-principal": "root",
            "X-Agent-Authz-Decision-Id": "00000000-0000-0000-0000-000000000000",
            "x-agent-authz-roles": "admin",
        },
    )
    assert r.status_code == 200, r.text
    (request,) = clean.llm_received()
    headers = request["headers"]
    assert headers["x-agent-authz-principal"] == "alice"
    assert "root" not in headers["x-agent-authz-principal"]
    assert headers["x-agent-authz-decision-id"] != "00000000-0000-0000-0000-000000000000"
    assert is_uuid(headers["x-agent-authz-decision-id"])
    assert "x-agent-authz-roles" not in headers


def test_a_client_cannot_choose_the_request_id(clean, tokens):
    """Envoy mints x-request-id (use_remote_address), so decision-log correlation can't be spoofed."""
    r = httpx.post(
        f"{clean.llm_base_url}/chat/completions",
        json=CHAT_BODY,
        headers={"authorization": f"Bearer {tokens['alice']}", "x-request-id": "chosen-by-client"},
    )
    assert r.status_code == 200
    (request,) = clean.llm_received()
    assert request["headers"]["x-request-id"] != "chosen-by-client"


def test_unclassified_paths_are_denied(clean, tokens):
    for method, path in (("POST", "/v2/other"), ("GET", "/v1/files"), ("POST", "/v1/embeddings")):
        r = httpx.request(
            method, f"{clean.envoy_url}{path}", json={} if method == "POST" else None,
            headers={"authorization": f"Bearer {tokens['root']}"},
        )
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    assert clean.llm_received() == []


def test_unparseable_body_on_a_classified_route_is_400(clean, tokens):
    for body in (b"{not json", b"[]", b'{"messages": []}'):
        r = httpx.post(
            f"{clean.llm_base_url}/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {tokens['alice']}", "content-type": "application/json"},
        )
        assert r.status_code == 400, (body, r.status_code, r.text)
    r = httpx.post(
        clean.mcp_url,
        content=b"{not json",
        headers={**MCP_HEADERS, "authorization": f"Bearer {tokens['alice']}", "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32700
    assert clean.llm_received() == []


def test_healthz_needs_no_token(stack):
    r = httpx.get(f"{stack.envoy_url}/healthz")
    assert r.status_code == 200
    assert all(d.get("path") != "/healthz" for d in stack.decisions()), "no check for /healthz"


def test_metrics_are_not_served_on_the_gateway_listener(clean, tokens):
    """Metrics are scraped from the admin ports; the public listener serves none, token or not."""
    for headers in ({}, {"authorization": f"Bearer {tokens['root']}"}):
        for path in ("/metrics", "/stats/prometheus", "/stats"):
            r = httpx.get(f"{clean.envoy_url}{path}", headers=headers)
            assert r.status_code in (401, 403, 404), (path, r.status_code)
            assert "agent_authz_" not in r.text and "envoy_" not in r.text
    # Where they are: Envoy's own on its admin port, agent-authz's on its admin address.
    r = httpx.get(f"{clean.envoy_admin_url}/stats/prometheus")
    assert r.status_code == 200 and "envoy_cluster_upstream_rq_total" in r.text
    r = httpx.get(f"http://127.0.0.1:{clean.ports['authz_admin']}/metrics")
    assert r.status_code == 200 and "agent_authz_checks_total" in r.text


def test_envoy_access_log_carries_the_decision(clean, tokens):
    """The shipped Envoy config logs agent-authz's dynamic metadata for every request."""
    r = httpx.post(
        f"{clean.llm_base_url}/chat/completions",
        json={**CHAT_BODY, "model": "gpt-4o"},
        headers={"authorization": f"Bearer {tokens['alice']}"},
    )
    assert r.status_code == 403
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(l) for l in clean.log_path("envoy").read_text().splitlines() if l.startswith("{")]
        denied = [l for l in lines if l.get("response_code") == 403 and l.get("path") == "/v1/chat/completions"]
        if denied or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert denied, "no access-log line for the denied request"
    line = denied[-1]
    assert line["response_code_details"] == "ext_authz_denied"
    assert line["request_id"]
    # Attributed to the principal, with the effect and the plain-text reason.
    assert line["principal"] == "alice", line
    assert line["effect"] == "deny", line
    assert "gpt-4o" in line["reason"], line
    assert line["decision_id"], line
