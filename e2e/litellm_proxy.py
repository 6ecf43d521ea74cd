"""LiteLLM's proxy on the loopback stack, shared by e2e/tests/test_litellm.py and the demo.

One LiteLLM process (`.tools/litellm`, installed by scripts/setup.sh) in front of the stack's
fake provider, with the stack's MCP server in its MCP gateway (`mcp_servers`) reached through
the stack's Envoy + agent-authz `/mcp` route: the recipes in README, "LiteLLM behind the
gateway". Offline: telemetry off and the bundled model cost map.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import asynccontextmanager, contextmanager
from typing import AsyncIterator, Iterator

import httpx2
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from stack import MCP_SERVER_NAME, REPO, Stack, StackError, free_port, http_get, tcp_open

LITELLM = REPO / ".tools" / "litellm" / "bin" / "litellm"
LITELLM_KEY = "sk-litellm-gateway-key"  # LiteLLM's master key, known only to the gateway
MODELS = ("gpt-4o-mini", "gpt-4o")
STARTUP_TIMEOUT = 120.0


@contextmanager
def litellm_proxy(stack: Stack) -> Iterator[int]:
    """Runs LiteLLM for `stack` until the block ends; yields its port."""
    if not LITELLM.exists():
        raise StackError(f"{LITELLM} is missing (run scripts/setup.sh)")
    port = free_port()
    provider = f"http://127.0.0.1:{stack.ports['llm']}/v1"
    config = stack.dir / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": m, "litellm_params": {"model": f"openai/{m}", "api_base": provider,
                                                             "api_key": "provider-key"}}
                       for m in MODELS],
        "litellm_settings": {"telemetry": False, "drop_params": False},
        "general_settings": {"master_key": LITELLM_KEY},
        # The MCP server through the gateway's /mcp route, never directly: agent-authz sits
        # between LiteLLM and the server. LiteLLM forwards the caller's
        # `x-mcp-<server>-authorization` header as `Authorization` to that server.
        "mcp_servers": {MCP_SERVER_NAME: {"url": stack.mcp_url, "transport": "http"}},
    }))
    log = stack.dir / "litellm.log"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
               NO_DOCS="True", DISABLE_ADMIN_UI="True")
    proc = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (tcp_open(port) and http_get(f"http://127.0.0.1:{port}/health/liveliness")[0] == 200):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"LiteLLM did not start; {log}:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


@asynccontextmanager
async def litellm_mcp_client(mcp_url: str, token: str) -> AsyncIterator[Client]:
    """The real `mcp` client against LiteLLM's MCP gateway, as a LiteLLM user connects: LiteLLM's
    key in `x-litellm-api-key`, the caller's JWT for the MCP server in LiteLLM's per-server header
    `x-mcp-<server>-authorization`. LiteLLM names the server's tools `<server>-<tool>`."""
    headers = {"x-litellm-api-key": f"Bearer {LITELLM_KEY}",
               f"x-mcp-{MCP_SERVER_NAME}-authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(10.0, read=60.0)) as http:
        async with Client(streamable_http_client(mcp_url, http_client=http), read_timeout_seconds=60.0) as client:
            yield client
