"""The sample MCP server behind the gateway, built with the official `mcp` Python SDK (2.x).

    MCP_EXECUTIONS_LOG=/tmp/exec.jsonl python e2e/upstreams/mcp_server.py --port 8082

Serves Streamable HTTP at /mcp, answering requests with SSE (the SDK default). Tools: refund,
lookup_ticket, delete_repo. Every tool execution appends one JSON line
{"tool": ..., "arguments": {...}} to the file named by MCP_EXECUTIONS_LOG, so tests can prove
that a denied call never executed.
"""

from __future__ import annotations

import argparse
import json
import os
import threading

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--json-response", action="store_true", help="answer with JSON instead of SSE")
    parser.add_argument("--stateless", action="store_true", help="stateless HTTP (no Mcp-Session-Id)")
    args = parser.parse_args()
    app = build_app(json_response=args.json_response, stateless=args.stateless)
    print(f"mcp server listening on http://{args.host}:{args.port}/mcp", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
