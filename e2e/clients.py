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


def bedrock_client(endpoint_url: str, token: str):
    """boto3's `bedrock-runtime` client pointed at the gateway, authenticating with a bearer token.

    Over HTTPS botocore sends Bedrock API keys (`AWS_BEARER_TOKEN_BEDROCK`) as
    `Authorization: Bearer <key>`; it refuses bearer auth over plain HTTP, so on the loopback
    test stack the request goes unsigned and the same header is set just before sending.
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}, read_timeout=15),
    )

    def bearer(request, **_):
        request.headers["Authorization"] = f"Bearer {token}"

    client.meta.events.register("before-send.bedrock-runtime.*", bearer)
    return client
