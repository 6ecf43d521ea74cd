"""The sample MCP server behind the gateway, built with the official `mcp` Python SDK (2.x).

    MCP_EXECUTIONS_LOG=/tmp/exec.jsonl python e2e/upstreams/mcp_server.py --port 8082

Serves Streamable HTTP at /mcp, answering requests with SSE (the SDK default). Tools: refund,
lookup_ticket, delete_repo. Every tool execution appends one JSON line
{"tool": ..., "arguments": {...}} to the file named by MCP_EXECUTIONS_LOG, so tests can prove
that a denied call never executed.

--gzip negotiated compresses every answer when the request's Accept-Encoding names gzip (as a
compressing middleware does); --gzip always compresses whatever the request says (a
misconfigured proxy). SSE answers are compressed as they stream.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import zlib

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

_log_lock = threading.Lock()


def _record(tool: str, arguments: dict) -> None:
    path = os.environ.get("MCP_EXECUTIONS_LOG")
    if not path:
        return
    with _log_lock, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")
        f.flush()


server = MCPServer(
    name="support",
    instructions="Customer-support tools: look up tickets and issue refunds.",
)


@server.tool(description="Refund a customer on a support ticket.")
def refund(ticket_id: str, amount_cents: int) -> str:
    _record("refund", {"ticket_id": ticket_id, "amount_cents": amount_cents})
    return f"refunded {amount_cents} cents on {ticket_id}"


@server.tool(description="Look up a support ticket.")
def lookup_ticket(ticket_id: str) -> str:
    _record("lookup_ticket", {"ticket_id": ticket_id})
    return f"ticket {ticket_id}: open, customer reports a double charge"


@server.tool(description="Delete a source repository (dangerous).")
def delete_repo(name: str) -> str:
    _record("delete_repo", {"name": name})
    return f"deleted repository {name}"


def build_app(*, json_response: bool = False, stateless: bool = False):
    # DNS-rebinding protection checks the Host (and Origin) header. Behind the gateway the Host is
    # Envoy's listener address (127.0.0.1:<port>), which these patterns accept; for a deployment on
    # another host name, list that name here.
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
    return server.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=json_response,
        stateless_http=stateless,
        transport_security=security,
    )


class Gzip:
    """ASGI middleware: gzip every HTTP answer (`negotiated`: only when the client accepts it)."""

    def __init__(self, app, *, negotiated: bool) -> None:
        self.app = app
        self.negotiated = negotiated

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        accept = b",".join(v for k, v in scope["headers"] if k.lower() == b"accept-encoding").lower()
        if self.negotiated and b"gzip" not in accept:
            return await self.app(scope, receive, send)
        compressor = zlib.compressobj(wbits=31)  # gzip framing

        async def compressing_send(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
                message = {**message, "headers": [*headers, (b"content-encoding", b"gzip")]}
            elif message["type"] == "http.response.body":
                more = message.get("more_body", False)
                body = compressor.compress(message.get("body", b""))
                body += compressor.flush(zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
                message = {**message, "body": body}
            await send(message)

        await self.app(scope, receive, compressing_send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--json-response", action="store_true", help="answer with JSON instead of SSE")
    parser.add_argument("--stateless", action="store_true", help="stateless HTTP (no Mcp-Session-Id)")
    parser.add_argument("--gzip", choices=["off", "negotiated", "always"], default="off",
                        help="compress answers (negotiated: when Accept-Encoding allows; always: regardless)")
    args = parser.parse_args()
    app = build_app(json_response=args.json_response, stateless=args.stateless)
    if args.gzip != "off":
        app = Gzip(app, negotiated=args.gzip == "negotiated")
    print(f"mcp server listening on http://{args.host}:{args.port}/mcp", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
