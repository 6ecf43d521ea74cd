"""The official MCP conformance suite's server scenarios (its client is the TypeScript SDK's)
against a TypeScript-SDK server, directly and through Envoy + agent-authz with a policy allowing
everything: a scenario that passes direct must pass through (e2e/conformance/run.py; its last
multi-run result is e2e/conformance/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys

from conftest import require_binary, require_stack_binaries
from stack import REPO

RUN = REPO / "e2e" / "conformance" / "run.py"


def test_every_scenario_passing_direct_passes_through_the_gateway():
    require_stack_binaries()
    require_binary(REPO / ".tools" / "node" / "bin" / "node", "run scripts/setup.sh")
    require_binary(REPO / ".tools" / "conformance" / "node_modules" / "@modelcontextprotocol" / "conformance",
                   "run scripts/setup.sh")
    result = subprocess.run([sys.executable, str(RUN), "--runs", "1"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.splitlines()[0]
    direct = int(summary.split("/")[0])
    assert direct >= 25, f"the TypeScript server should pass the suite directly: {summary}"
