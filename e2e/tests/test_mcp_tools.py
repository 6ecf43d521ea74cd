"""Question 3 through the real `mcp` SDK: what may the caller do with a tool, with these arguments?"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from mcp import MCPError

from clients import find_mcp_error, mcp_client

MODES = ["legacy", "auto"]  # 2025-11-25 handshake, and 2026-07-28 (server/discover, Mcp-Method headers)


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("mode", MODES)
def test_alice_connects_and_lists_tools(stack, tokens, mode):
    async def go():
        async with mcp_client(stack.mcp_url, tokens["alice"], mode=mode) as client:
            tools = await client.list_tools()
            return client.protocol_version, sorted(t.name for t in tools.tools)

    version, names = run(go())
    assert version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
    # delete_repo exists on the server but alice may not see it: the answer was filtered.
    assert names == ["lookup_ticket", "refund"]


def list_tools(url: str, token: str, mode: str = "legacy") -> list[str]:
    async def go():
        async with mcp_client(url, token, mode=mode) as client:
            return sorted(t.name for t in (await client.list_tools()).tools)

    return run(go())


@pytest.fixture(scope="module")
def json_stack():
    """A stack whose MCP server answers application/json instead of SSE."""
    from conftest import require_stack_binaries
    from stack import Stack

    require_stack_binaries()
    with Stack(name="mcp-json", mcp_args=("--json-response",)) as s:
        yield s


@pytest.mark.parametrize("answer", ["sse", "json"])
def test_tools_list_answers_are_filtered_per_principal(stack, json_stack, answer):
    target = stack if answer == "sse" else json_stack
    assert list_tools(target.mcp_url, target.token_for("alice")) == ["lookup_ticket", "refund"]
    assert list_tools(target.mcp_url, target.token_for("root")) == ["delete_repo", "lookup_ticket", "refund"]
    # The server itself still lists everything: the filter is the gateway's.
    assert list_tools(target.mcp_direct_url, None) == ["delete_repo", "lookup_ticket", "refund"]
    before = len(target.decisions())
    list_tools(target.mcp_url, target.token_for("alice"))
    hidden = target.wait_for_decision(lambda d: d.get("phase") == "response", after=before)
    assert hidden["hidden"] == ["delete_repo"]
    assert hidden["principal"]["id"] == "alice"
    # Envoy's own access log shows what was hidden, from ext_proc's metadata.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(l) for l in target.log_path("envoy").read_text().splitlines() if l.startswith("{")]
        if any(l.get("hidden") == "delete_repo" for l in lines):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no access-log line names the hidden tool")


@pytest.mark.parametrize("mode", MODES)
def test_refund_within_limit_on_own_ticket_executes(stack, tokens, mode):
    before = len(stack.mcp_executions())

    async def go():
        async with mcp_client(stack.mcp_url, tokens["alice"], mode=mode) as client:
            return await client.call_tool("refund", {"ticket_id": "T-100", "amount_cents": 5000})

    result = run(go())
    assert not result.is_error
    assert "refunded 5000 cents on T-100" in result.content[0].text
    assert stack.mcp_executions()[before:] == [
        {"tool": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 5000}}
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"ticket_id": "T-100", "amount_cents": 200000}, id="over-limit"),
        pytest.param({"ticket_id": "T-999", "amount_cents": 10}, id="other-ticket"),
    ],
)
def test_refund_outside_the_binding_raises_and_never_executes(stack, tokens, mode, arguments):
    before = len(stack.mcp_executions())

    async def go():
        async with mcp_client(stack.mcp_url, tokens["alice"], mode=mode) as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("refund", arguments)
            # The session survives a denied call: the next allowed call still works.
            ok = await client.call_tool("lookup_ticket", {"ticket_id": "T-100"})
            return caught.value, ok

    err, ok = run(go())
    assert "refund" in err.message
    assert err.code == 403
    assert not ok.is_error
    executed = stack.mcp_executions()[before:]
    assert [e["tool"] for e in executed] == ["lookup_ticket"], f"the denied refund executed: {executed}"


def test_tools_outside_the_role_are_denied(stack, tokens):
    before = len(stack.mcp_executions())

    async def go():
        async with mcp_client(stack.mcp_url, tokens["alice"]) as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("delete_repo", {"name": "agent-authz"})
            return caught.value

    err = run(go())
    assert "delete_repo" in err.message
    assert stack.mcp_executions()[before:] == []


def test_bob_is_bound_to_his_own_ticket_and_limit(stack, tokens):
    before = len(stack.mcp_executions())

    async def go():
        async with mcp_client(stack.mcp_url, tokens["bob"]) as client:
            await client.call_tool("refund", {"ticket_id": "T-200", "amount_cents": 4000})
            for args in ({"ticket_id": "T-200", "amount_cents": 6000}, {"ticket_id": "T-100", "amount_cents": 1}):
                with pytest.raises(MCPError):
                    await client.call_tool("refund", args)

    run(go())
    assert stack.mcp_executions()[before:] == [
        {"tool": "refund", "arguments": {"ticket_id": "T-200", "amount_cents": 4000}}
    ]


@pytest.mark.parametrize("mode", MODES)
def test_mallory_cannot_even_connect(stack, tokens, mode):
    requests_before = len(stack.mcp_received())

    async def go():
        async with mcp_client(stack.mcp_url, tokens["mallory"], mode=mode) as client:
            await client.list_tools()

    with pytest.raises(BaseException) as caught:
        run(go())
    err = find_mcp_error(caught.value)
    assert err is not None, f"expected an MCP error, got {caught.value!r}"
    assert err.code == 403
    assert "mallory" in err.message
    assert stack.mcp_received()[requests_before:] == [], "nothing of mallory's may reach the MCP server"


def test_denied_tools_call_is_a_jsonrpc_error_with_the_request_id(stack, tokens):
    """The wire shape: HTTP 200, application/json, the caller's id, code 403, data."""
    before = len(stack.mcp_executions())
    r = httpx.post(
        stack.mcp_url,
        json={
            "jsonrpc": "2.0",
            "id": "req-42",
            "method": "tools/call",
            "params": {"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 999999}},
        },
        headers={
            "authorization": f"Bearer {tokens['alice']}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-11-25",
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == "req-42"
    assert "result" not in body
    assert body["error"]["code"] == 403
    assert "refund" in body["error"]["message"]
    assert isinstance(body["error"].get("data"), dict)
    assert stack.mcp_executions()[before:] == []


def test_string_amounts_cannot_slip_past_the_limit(stack, tokens):
    """A numeric string would dodge `amount_cents > limit` in CEL; the policy fails closed."""
    before = len(stack.mcp_executions())
    r = httpx.post(
        stack.mcp_url,
        json={
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": "99999999"}},
        },
        headers={
            "authorization": f"Bearer {tokens['alice']}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-11-25",
        },
    )
    # Two defences, either of which refuses it: the tool's published inputSchema (once the
    # gateway has seen a tools/list from this server: 400, -32602), and the policy's type guard
    # (200, JSON-RPC 403).
    assert (r.status_code, r.json()["error"]["code"]) in {(200, 403), (400, -32602)}, r.text
    assert stack.mcp_executions()[before:] == []


@pytest.mark.parametrize("method", ["completion/complete", "Tools/Call", "sampling/createMessage"])
def test_methods_no_policy_names_are_denied(stack, tokens, method):
    """Any other MCP method is asked as its own action; no rule names it, so it is denied."""
    requests_before = len(stack.mcp_received())
    r = httpx.post(
        stack.mcp_url,
        json={"jsonrpc": "2.0", "id": 9, "method": method, "params": {}},
        headers={
            "authorization": f"Bearer {tokens['root']}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-11-25",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == 9
    assert body["error"]["code"] == 403
    assert stack.mcp_received()[requests_before:] == []


def test_arguments_are_judged_as_the_server_reads_them(stack, tokens):
    """After a tools/list through the gateway, a call whose argument types contradict the
    tool's published inputSchema is refused before any policy or server sees it."""
    assert "refund" in list_tools(stack.mcp_url, tokens["alice"])
    before = len(stack.mcp_executions())
    r = httpx.post(
        stack.mcp_url,
        json={"jsonrpc": "2.0", "id": 77, "method": "tools/call",
              "params": {"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": "999999"}}},
        headers={"authorization": f"Bearer {tokens['alice']}", "accept": "application/json, text/event-stream",
                 "mcp-protocol-version": "2025-11-25"},
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert r.json()["id"] == 77
    assert error["code"] == -32602
    assert "amount_cents must be integer" in error["message"]
    assert len(stack.mcp_executions()) == before
