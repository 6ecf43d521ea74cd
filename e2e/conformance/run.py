"""The official MCP conformance suite (npm @modelcontextprotocol/conformance, server scenarios)
against an MCP server on the TypeScript SDK (everything-server.mjs), directly and through the
real Envoy + agent-authz + Cerbos with a policy allowing everything: every scenario that passes
direct must pass through. Repeated runs give the pass rate of each side.

    .tools/venv/bin/python e2e/conformance/run.py [--runs 3] [--suite active] [--write]

Needs Node >= 22 and the suite (scripts/setup.sh installs .tools/node and .tools/conformance).
--write records the result in e2e/conformance/RESULTS.md (the committed last result, dated).
Exit status 1 when a scenario passed direct in a run and failed through the gateway in it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from stack import REPO, Stack, free_port, render_envoy_config, tcp_open  # noqa: E402

TOOLS = REPO / ".tools"
NODE = TOOLS / "node" / "bin" / "node"
SUITE_DIR = TOOLS / "conformance"  # package.json + node_modules (npm install of this directory)
CLI = SUITE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"

ALLOW_EVERYTHING = """\
# The conformance run's policy: every MCP message is allowed (the gateway must be transparent).
apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: mcp_server
  rules:
    - name: conformance-allows-everything
      actions: ["*"]
      effect: EFFECT_ALLOW
      roles: ["*"]
"""


def check_tools() -> None:
    missing = [str(p) for p in (NODE, CLI) if not p.exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run scripts/setup.sh")
    version = subprocess.run([str(NODE), "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 22:
        sys.exit(f"{NODE} is {version}; the conformance suite needs Node >= 22")


def start_server(port: int, log: Path) -> subprocess.Popen:
    """The TypeScript-SDK server, run from the suite's directory (its node_modules)."""
    shutil.copy(HERE / "everything-server.mjs", SUITE_DIR / "everything-server.mjs")
    proc = subprocess.Popen([str(NODE), str(SUITE_DIR / "everything-server.mjs"), "--port", str(port)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while not tcp_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the TypeScript MCP server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def gateway_envoy(stack: Stack, mcp_port: int, token: str) -> str:
    """envoy/agent-gateway.yaml in front of the TS server, adding the principal's token (the
    suite's client sends none) before ext_authz; its listener URL."""
    config = yaml.safe_load((REPO / "envoy" / "agent-gateway.yaml").read_text())
    (listener,) = config["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"append": {
                "header": {"key": "authorization", "value": f"Bearer {token}"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]},
        },
    })
    ports = {k: stack.ports[k] for k in ("authz", "authz_admin", "llm")}
    ports.update(listener=free_port(), admin=free_port(), mcp=mcp_port)
    path = stack.dir / "envoy-conformance.yaml"
    path.write_text(render_envoy_config(yaml.safe_dump(config, sort_keys=False), ports, str(stack.jwks_path)))
    stack._spawn_envoy("envoy_conformance", path, ports["admin"], None)
    return f"http://127.0.0.1:{ports['listener']}"


def run_suite(url: str, suite: str, out: Path) -> dict[str, bool]:
    """Scenario -> passed (every check SUCCESS, WARNING or INFO) for one run of the suite."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(NODE), str(CLI), "server", "--url", url, "--suite", suite, "-o", str(out)],
                   cwd=SUITE_DIR, capture_output=True, text=True, timeout=900)
    results = {}
    for checks_file in sorted(out.glob("server-*/checks.json")):
        name = re.sub(r"^server-(.*)-\d{4}-\d\d-\d\dT.*$", r"\1", checks_file.parent.name)
        checks = json.loads(checks_file.read_text())
        results[name] = bool(checks) and all(c["status"] in ("SUCCESS", "WARNING", "INFO") for c in checks)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--suite", default="active", choices=["active", "all", "pending"])
    parser.add_argument("--write", action="store_true", help="record the result in RESULTS.md")
    args = parser.parse_args()
    check_tools()
    work = Path(tempfile.mkdtemp(prefix="agent-authz-conformance-"))
    direct: Counter[str] = Counter()
    through: Counter[str] = Counter()
    regressions: list[str] = []
    with Stack(name="conformance", copy_policies=True) as stack:
        (stack.policies_dir / "mcp_server.yaml").write_text(ALLOW_EVERYTHING)
        time.sleep(2)  # Cerbos watches the directory
        port = free_port()
        server = start_server(port, stack.dir / "everything-server.log")
        try:
            gateway = gateway_envoy(stack, port, stack.token_for("alice"))
            for i in range(args.runs):
                d = run_suite(f"http://127.0.0.1:{port}/mcp", args.suite, work / f"direct-{i}")
                t = run_suite(f"{gateway}/mcp", args.suite, work / f"through-{i}")
                direct.update(k for k, ok in d.items() if ok)
                through.update(k for k, ok in t.items() if ok)
                regressions += [f"run {i + 1}: {k}" for k, ok in d.items() if ok and not t.get(k)]
                scenarios = sorted(d)
            judged = [d for d in stack.decisions() if d.get("format") == "mcp"]
        finally:
            os.killpg(server.pid, 15)
    if not judged:
        sys.exit("no MCP decision was logged: the gateway run did not go through agent-authz")
    lines = [f"| scenario | passed direct (of {args.runs}) | passed through the gateway (of {args.runs}) |", "|---|---|---|"]
    lines += [f"| {s} | {direct[s]} | {through[s]} |" for s in scenarios]
    total = len(scenarios) * args.runs
    summary = (f"{sum(direct.values())}/{total} scenario runs passed direct, {sum(through.values())}/{total} "
               f"through Envoy + agent-authz (suite {args.suite}, {args.runs} runs)")
    summary += f"; agent-authz judged {len(judged)} MCP exchanges"
    print(summary)
    print("\n".join(lines))
    if regressions:
        print("passed direct but failed through the gateway:\n  " + "\n  ".join(regressions))
    if args.write:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        (HERE / "RESULTS.md").write_text(
            f"# MCP conformance: direct vs through the gateway\n\nLast run: {now}, "
            f"`.tools/venv/bin/python e2e/conformance/run.py --runs {args.runs} --suite {args.suite} --write`\n\n"
            f"{summary}.\n\n" + "\n".join(lines) + "\n\n"
            + ("Passed direct, failed through:\n\n" + "\n".join(f"- {r}" for r in regressions) + "\n" if regressions
               else "Every scenario that passed direct passed through.\n"))
    print(f"logs and per-scenario checks: {work}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
