"""The TypeScript-SDK MCP server (e2e/conformance/everything-server.mjs) as a stack upstream.

    python e2e/upstreams/ts_mcp_server.py --port 8082

The stack runs its MCP upstream with Python; this replaces itself with Node 22 (.tools/node)
running the server with --support-tools (the shipped policies' lookup_ticket and refund beside
the conformance tools). The .mjs runs from .tools/conformance, whose node_modules hold the SDK
(ESM resolves imports next to the file), as e2e/conformance/run.py does.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / ".tools" / "node" / "bin" / "node"
SUITE_DIR = REPO / ".tools" / "conformance"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    for needed in (NODE, SUITE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk"):
        if not needed.exists():
            raise SystemExit(f"missing {needed}: run scripts/setup.sh")
    script = SUITE_DIR / "everything-server-e2e.mjs"
    shutil.copy(REPO / "e2e" / "conformance" / "everything-server.mjs", script)
    os.execv(NODE, [str(NODE), str(script), "--port", str(args.port), "--support-tools"])


if __name__ == "__main__":
    main()
