"""What the receivers read: the raw MCP server's record, a client's decoding of an answer, the
provider's view of an LLM request; and the decision-log records they are compared with.

The differential tests (test_receiver_views.py, test_variants.py) judge agent-authz by what the
receiver parsed, never by what agent-authz says it did.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx

from stack import Stack

ALICE_VISIBLE = {"lookup_ticket", "refund"}  # policies/mcp_server.yaml: support sees these
ALL_TOOLS = {"lookup_ticket", "refund", "delete_repo"}


class RawMcp:
    """Control and record of e2e/upstreams/mcp_raw.py (talked to directly, not via Envoy)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.base = f"http://127.0.0.1:{stack.ports['mcp']}"

    def reset(self, **mode: Any) -> None:
        httpx.post(f"{self.base}/_reset", timeout=5).raise_for_status()
        if mode:
            httpx.post(f"{self.base}/_mode", json=mode, timeout=5).raise_for_status()

    def parsed(self) -> list[dict]:
        r = httpx.get(f"{self.base}/_parsed", timeout=5)
        r.raise_for_status()
        return r.json()

    def executed(self) -> list[dict]:
        return [call for entry in self.parsed() for call in entry["executed"]]


def mcp_headers(token: str, version: str = "2025-11-25", **extra: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": version,
        **extra,
    }


# ---------------------------------------------------------------------- what a client decodes
def sse_event_data(body: bytes, *, any_type: bool = False) -> list[str]:
    """The data of every `message` event an SSE parser dispatches (the WHATWG event-stream
    rules: a BOM is dropped, CRLF / CR / LF end lines, `data` lines join with LF, comments and
    unknown fields are ignored, an incomplete last event is discarded). MCP clients read
    JSON-RPC from `message` events (the default type) with data; other events (the 2024-11-05
    transport's `endpoint`) and empty data carry none, so they are left out, unless `any_type`
    (providers such as Anthropic name every event)."""
    text = body.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)
    out: list[str] = []
    data: list[str] | None = None
    event = ""
    for line in lines[:-1]:  # the piece after the last line end is not a complete line
        if line == "":
            if data is not None and "\n".join(data) != "" and (any_type or event in ("", "message")):
                out.append("\n".join(data))
            data, event = None, ""
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            data = (data or []) + [value]
        elif field == "event":
            event = value
    return out


def decoded_messages(response: httpx.Response) -> list[Any]:
    """The JSON-RPC messages a client reads from an answer, choosing the reader by content type
    as the SDK clients do (lower-cased prefix; any other type is not read). httpx has already
    undone any content-encoding it knows, as the SDK clients' httpx does."""
    content_type = response.headers.get("content-type", "").lower()
    body = response.content
    if not body:
        return []
    if content_type.startswith("text/event-stream"):
        texts = sse_event_data(body)
    elif content_type.startswith("application/json"):
        texts = [body.decode("utf-8")]
    else:
        return []
    out: list[Any] = []
    for text in texts:
        message = json.loads(text)
        out.extend(message if isinstance(message, list) else [message])
    return out


def decoded_tool_names(response: httpx.Response) -> set[str] | None:
    """The tool names a client reads from a tools/list answer; None if it holds no list."""
    names: set[str] | None = None
    try:
        messages = decoded_messages(response)
    except (ValueError, UnicodeDecodeError):
        return None
    for message in messages:
        result = message.get("result") if isinstance(message, dict) else None
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            names = (names or set()) | {t.get("name") for t in result["tools"] if isinstance(t, dict)}
    return names


def post_raw(stack: Stack, body: bytes | str, headers: dict[str, str], *, timeout: float = 15) -> httpx.Response:
    """A POST through the gateway. Decoding errors (a gzip the client cannot read) count as a
    refused answer: the response is returned with its raw bytes."""
    content = body.encode() if isinstance(body, str) else body
    with httpx.Client(timeout=timeout) as client:
        return client.post(stack.mcp_url, content=content, headers=headers)


# ---------------------------------------------------------------------- the decision log
def decisions_for(stack: Stack, decision_id: str, timeout: float = 3.0, phase: str | None = None) -> list[dict]:
    """Every decision-log record with this decision id (and phase), waiting for the log."""
    deadline = time.monotonic() + timeout
    while True:
        found = [d for d in stack.decisions() if d.get("decision_id") == decision_id
                 and (phase is None or d.get("phase", "request") == phase)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def judged_allowed(records: list[dict], kind: str | None = None) -> list[dict]:
    """The resources the decision records say were judged and allowed."""
    out = []
    for record in records:
        for resource in record.get("resources") or []:
            if resource.get("effect") in ("allow", "EFFECT_ALLOW") and (kind is None or resource.get("kind") == kind):
                out.append(resource)
    return out


def metric_series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


# How many variants each differential family tried (printed in the test summary by conftest).
VARIANT_COUNTS: dict[str, int] = {}
