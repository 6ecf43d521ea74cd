"""Idle MCP streams hold no ext_proc stream (issue 18).

An MCP GET stream stays open for hours. ext_proc used to keep its gRPC stream to agent-authz
open for as long, round-tripping every chunk: ~1,000 of them tripped the agent_authz cluster's
circuit breaker and every new check got 503. agent-authz now ends the ext_proc stream as soon as
the exchange needs no rewriting (here: a Streamable HTTP session's GET stream, once its first
event shows it is not the 2024-11-05 HTTP+SSE transport). The test holds IDLE_STREAMS streams open through the real Envoy and
agent-authz, checks that Envoy has (almost) no request open to agent-authz, and that checks keep
succeeding meanwhile.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from stack import Stack, http_get

IDLE_STREAMS = 2000
OPEN_AT_ONCE = 25


@pytest.fixture(scope="module")
def idle():
    # Every stream asks the same question (alice may connect): the verdict cache answers all
    # but the first, so the test measures streams, not Cerbos on a busy 2-core machine.
    with Stack(name="idle", mcp_script="e2e/upstreams/idle_sse.py",
               authz_overrides={"cache": {"enabled": True}}) as s:
        yield s


def envoy_stat(stack: Stack, name: str) -> int:
    status, body = http_get(f"{stack.envoy_admin_url}/stats?filter=^{re.escape(name)}$")
    assert status == 200
    match = re.search(rf"^{re.escape(name)}: (\d+)$", body.decode(), re.M)
    assert match, body
    return int(match.group(1))


async def open_stream(port: int, token: str, session: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (f"GET /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {token}\r\n"
         f"accept: text/event-stream\r\nmcp-protocol-version: 2025-11-25\r\nmcp-session-id: {session}\r\n\r\n").encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    # The first event (the server's comment) arrived: the stream is open end to end.
    await asyncio.wait_for(reader.readuntil(b": open\n\n"), timeout=30)
    return reader, writer


def test_thousands_of_idle_mcp_streams_hold_no_ext_proc_stream(idle):
    token = idle.token_for("alice")
    port = idle.ports["listener"]
    # A Streamable HTTP session (its GET streams carry its id, sealed to alice by the gateway).
    init = httpx.post(idle.mcp_url, headers={"authorization": f"Bearer {token}",
                                             "accept": "application/json, text/event-stream"},
                      json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                       "clientInfo": {"name": "idle", "version": "1"}}}, timeout=10)
    assert init.status_code == 200, init.text
    session = init.headers["mcp-session-id"]
    assert session != "idle-1", "the gateway seals the session id"

    async def scenario() -> tuple[int, int, list[int]]:
        streams = []
        for _ in range(IDLE_STREAMS // OPEN_AT_ONCE):
            streams += await asyncio.gather(*(open_stream(port, token, session) for _ in range(OPEN_AT_ONCE)))
        active = envoy_stat(idle, "cluster.agent_authz.upstream_rq_active")
        overflow = envoy_stat(idle, "cluster.agent_authz.upstream_rq_pending_overflow")
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = [
                (await client.post(
                    f"{idle.llm_base_url}/chat/completions",
                    headers={"authorization": f"Bearer {token}"},
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                )).status_code
                for _ in range(20)
            ]
        for _, writer in streams:
            writer.close()
        return active, overflow, statuses

    active, overflow, statuses = asyncio.run(scenario())
    print(f"{IDLE_STREAMS} idle MCP streams open; Envoy requests open to agent-authz: {active}")
    assert active < 50, f"{active} ext_proc streams held open for {IDLE_STREAMS} idle MCP streams"
    assert overflow == 0
    assert statuses == [200] * 20, "checks keep succeeding while the streams are open"
