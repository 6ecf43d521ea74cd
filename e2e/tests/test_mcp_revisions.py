"""The TypeScript SDK's MCP server (@modelcontextprotocol/sdk, e2e/conformance/everything-server.mjs)
behind the real Envoy + agent-authz + Cerbos with the shipped policies, at every protocol revision
it serves over Streamable HTTP (its SUPPORTED_PROTOCOL_VERSIONS from 2025-03-26 on; the older ones
predate Streamable HTTP).

Each revision is driven as a client of that revision does: initialize with that protocolVersion,
notifications/initialized, tools/list, an allowed and a denied tools/call. The Python `mcp` client
always offers its latest handshake revision (2025-11-25), so it drives that one; the earlier
revisions are sent as raw JSON-RPC over httpx, with MCP-Protocol-Version from 2025-06-18 on (2025-03-26
has no such header). One server process serves the whole module; what it executed is its own record
(MCP_EXECUTIONS_LOG), compared with what agent-authz judged.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import httpx
import pytest

from clients import find_mcp_error, mcp_client
from conftest import require_binary, require_stack_binaries
from stack import REPO, Stack

REVISIONS = ["2025-03-26", "2025-06-18", "2025-11-25"]
SDK = REPO / ".tools" / "conformance" / "node_modules" / "@modelcontextprotocol" / "sdk"
# What alice (role support) may see under policies/mcp_server.yaml; the server lists 14 more.
ALICE_SEES = ["lookup_ticket", "refund"]
OVER_LIMIT = {"ticket_id": "T-100", "amount_cents": 500000}  # alice's limit is 100000


@pytest.fixture(scope="module")
def ts_stack():
    require_stack_binaries()
    require_binary(REPO / ".tools" / "node" / "bin" / "node", "run scripts/setup.sh")
    require_binary(SDK, "run scripts/setup.sh")
    with Stack(name="mcp-revisions", mcp_script="e2e/upstreams/ts_mcp_server.py") as s:
        yield s


def test_the_sdk_serves_the_revisions_under_test():
    """The revision list above is the SDK's own (a newer SDK adding one fails here)."""
    require_binary(SDK, "run scripts/setup.sh")
    types = (SDK / "dist" / "esm" / "types.js").read_text()
    latest = types.split("LATEST_PROTOCOL_VERSION = '")[1].split("'")[0]
    supported = types.split("SUPPORTED_PROTOCOL_VERSIONS = [")[1].split("]")[0]
    listed = {latest} | {v.strip().strip("'") for v in supported.split(",") if v.strip().startswith("'")}
    # 2024-11-05 and 2024-10-07 are HTTP+SSE revisions; this server speaks Streamable HTTP only.
    assert sorted(v for v in listed if v >= "2025-03-26") == REVISIONS


class RawSession:
    """One MCP session over Streamable HTTP as a client of `revision` sends it, raw JSON-RPC."""

    def __init__(self, url: str, token: str, revision: str) -> None:
        self.url = url
        self.revision = revision
        self.ids = itertools.count(1)
        self.last_session = ""
        self.http = httpx.Client(timeout=15, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
            event_hooks={"response": [self._note_session]})

    def _post(self, message: dict) -> httpx.Response:
        resp = self.http.post(self.url, json=message)
        assert resp.status_code in (200, 202), (resp.status_code, resp.text)
        return resp

    def request(self, method: str, params: dict) -> dict:
        """The JSON-RPC response to one request (from a JSON body or the answer's SSE events)."""
        rid = next(self.ids)
        resp = self._post({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        if resp.headers.get("content-type", "").startswith("text/event-stream"):
            messages = [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:") and line[5:].strip()]
        else:
            messages = [resp.json()]
        (answer,) = [m for m in messages if m.get("id") == rid]
        return answer

    def initialize(self) -> dict:
        answer = self.request("initialize", {"protocolVersion": self.revision, "capabilities": {},
                                             "clientInfo": {"name": "revision-test", "version": "1"}})
        # Every later message carries the session, and from 2025-06-18 on the negotiated revision.
        self.http.headers["Mcp-Session-Id"] = self.last_session
        if self.revision >= "2025-06-18":
            self.http.headers["MCP-Protocol-Version"] = answer["result"]["protocolVersion"]
        self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def _note_session(self, resp: httpx.Response) -> None:
        if "mcp-session-id" in resp.headers:
            self.last_session = resp.headers["mcp-session-id"]

    def __enter__(self) -> "RawSession":
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()


def executed(stack: Stack, tool: str) -> list[dict]:
    return [e["arguments"] for e in stack.mcp_executions() if e["tool"] == tool]


def denied_refund_decision(stack: Stack, before: int) -> dict:
    return stack.wait_for_decision(
        lambda d: d.get("effect") == "deny" and d.get("format") == "mcp"
        and any(r.get("action") == "tools/call/refund" for r in d.get("resources", [])), after=before)


@pytest.mark.parametrize("revision", [r for r in REVISIONS if r != "2025-11-25"])
def test_raw_client_at_revision(ts_stack, revision):
    stack = ts_stack
    before = len(stack.decisions())
    ticket = f"T-{revision}"  # this revision's own lookup, told apart in the server's record
    with RawSession(stack.mcp_url, stack.token_for("alice"), revision) as s:
        init = s.initialize()
        assert init["result"]["protocolVersion"] == revision, init
        assert init["result"]["serverInfo"]["name"] == "agent-authz-everything-server"

        listed = s.request("tools/list", {})
        # The server lists 16 tools; alice sees the two the policy shows her.
        assert sorted(t["name"] for t in listed["result"]["tools"]) == ALICE_SEES, listed

        allowed = s.request("tools/call", {"name": "lookup_ticket", "arguments": {"ticket_id": ticket}})
        assert allowed["result"]["content"] == [{"type": "text", "text": f"ticket {ticket}: open"}], allowed

        denied = s.request("tools/call", {"name": "refund", "arguments": OVER_LIMIT})
        assert "result" not in denied, denied
        assert denied["error"]["code"] == 403 and denied["error"]["data"]["refusal"] == "policy_denied", denied

    assert executed(stack, "lookup_ticket").count({"ticket_id": ticket}) == 1
    assert OVER_LIMIT not in executed(stack, "refund"), "the denied refund reached the server"
    decision = denied_refund_decision(stack, before)
    assert decision["principal"]["id"] == "alice"


def test_python_mcp_client_at_2025_11_25(ts_stack):
    """The real `mcp` client: its handshake offers 2025-11-25, which the TS server accepts."""
    stack = ts_stack
    before = len(stack.decisions())

    async def go():
        async with mcp_client(stack.mcp_url, stack.token_for("alice"), mode="legacy") as client:
            version = client.protocol_version
            names = sorted(t.name for t in (await client.list_tools()).tools)
            allowed = await client.call_tool("lookup_ticket", {"ticket_id": "T-2025-11-25"})
            try:
                await client.call_tool("refund", OVER_LIMIT)
                denial = None
            except BaseException as exc:  # noqa: BLE001 - the SDK may wrap it in exception groups
                denial = find_mcp_error(exc)
                if denial is None:
                    raise
            return version, names, allowed, denial

    version, names, allowed, denial = asyncio.run(go())
    assert version == "2025-11-25"
    assert names == ALICE_SEES
    assert not allowed.is_error and allowed.content[0].text == "ticket T-2025-11-25: open"
    assert denial is not None, "the over-limit refund was not refused"
    assert denial.code == 403 and "agent-authz" in denial.message
    assert executed(stack, "lookup_ticket").count({"ticket_id": "T-2025-11-25"}) == 1
    assert OVER_LIMIT not in executed(stack, "refund"), "the denied refund reached the server"
    assert denied_refund_decision(stack, before)["principal"]["id"] == "alice"
