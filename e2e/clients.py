"""Thin helpers around the real clients (openai, mcp) as an agent would use them."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from openai import OpenAI


def openai_client(base_url: str, token: str) -> OpenAI:
    """The OpenAI SDK pointed at the gateway; it sends the JWT as `Authorization: Bearer`."""
    return OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=15.0)


@asynccontextmanager
async def mcp_client(url: str, token: str | None, *, mode: str = "legacy") -> AsyncIterator[Client]:
    """An MCP client session over Streamable HTTP, carrying `Authorization: Bearer <token>`.

    mode "legacy" runs the initialize handshake (2025-11-25); "auto" probes server/discover and
    speaks 2026-07-28 when the server does.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(10.0, read=30.0)) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, read_timeout_seconds=15.0) as client:
            yield client


def find_mcp_error(exc: BaseException) -> MCPError | None:
    """The MCPError inside `exc`, which the SDK may wrap in (nested) exception groups."""
    if isinstance(exc, MCPError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_mcp_error(inner)
            if found is not None:
                return found
    if exc.__cause__ is not None:
        return find_mcp_error(exc.__cause__)
    return None
