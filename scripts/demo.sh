#!/usr/bin/env bash
# The demo: Envoy + agent-authz + Cerbos + sample LLM and MCP upstreams, driven through the three
# questions with the real openai and mcp clients. Exits 0 when every step got the expected decision.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
echo "[demo] cargo build (debug)"
cargo build
echo "[demo] running e2e/demo.py"
exec .tools/venv/bin/python e2e/demo.py
