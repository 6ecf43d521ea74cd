"""Instructions per check, counted by callgrind: a regression check that load on the machine
cannot blur (the count is the same whatever else runs), for comparing two builds.

    .tools/venv/bin/python bench/callgrind.py OLD=/path/to/agent-authz NEW=target/release/agent-authz
        [--checks 300] [--grpc-load target/release/examples/grpc_load]

For each binary and scenario, agent-authz runs under `valgrind --tool=callgrind` against the
real Cerbos (bench/cerbos.yaml, bench/policies), gets warmed up with checks straight from
examples/grpc_load (no Envoy), has its counters zeroed, answers `--checks` more, one at a time,
and the instructions of those checks (every thread: gRPC, pipeline, decision-log writer) are
divided by their number. Scenarios: the bench's 16 KiB chat declaring 20 tools with the verdict
cache hot, a 1 KiB chat uncached (asks Cerbos every time), and an MCP tools/call cached; with
`--dialects` also an Anthropic Messages, an OpenAI Responses, a Gemini and a Bedrock Converse
request declaring the same 20 tools and an Azure OpenAI chat, cache hot. Every check must be allowed (checked on the warm-up). Prints a table (instructions per check, and NEW/OLD) and writes it as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    BENCH,
    KIB,
    MCP_HEADERS,
    TOOLS,
    TOOLS_BIN,
    Issuer,
    Procs,
    chat_body,
    free_port,
    http_get,
    mcp_call_body,
    principal_claims,
    tcp_open,
)

T = TypeVar("T")

SCENARIOS = (
    # name, body, path, extra headers, config template (cache on/off)
    ("chat 16 KiB, 20 tools, cache hot", lambda: chat_body(16 * KIB, 20), "/v1/chat/completions", {},
     "agent-authz-cached.yaml"),
    ("chat 1 KiB, uncached", lambda: chat_body(1 * KIB, 0), "/v1/chat/completions", {}, "agent-authz.yaml"),
    ("MCP tools/call, cache hot", mcp_call_body, "/mcp", MCP_HEADERS, "agent-authz-cached.yaml"),
)


def _schema() -> dict:
    return {"type": "object", "required": ["ticket_id"], "properties": {
        "ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 50}}}


def _describe(name: str) -> str:
    return f"{name}: " + "Looks things up for the support agent. " * 6


def _dumps(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def messages_body() -> bytes:
    """Anthropic Messages declaring the bench's 20 tools, a 1.8 KiB user message (~11 KiB)."""
    tools = [{"name": n, "description": _describe(n), "input_schema": _schema()} for n in TOOLS]
    return _dumps({"model": "gpt-4o-mini", "max_tokens": 256, "tools": tools,
                   "messages": [{"role": "user", "content": "hello " * 300}]})


def responses_body() -> bytes:
    """OpenAI Responses, the same tools and input."""
    tools = [{"type": "function", "name": n, "description": _describe(n), "parameters": _schema()} for n in TOOLS]
    return _dumps({"model": "gpt-4o-mini", "input": "hello " * 300, "tools": tools})


def gemini_body() -> bytes:
    """Gemini generateContent, the same tools and text (the model, in the path, is one the bench's
    token may invoke)."""
    declarations = [{"name": n, "description": _describe(n), "parameters": _schema()} for n in TOOLS]
    return _dumps({"contents": [{"role": "user", "parts": [{"text": "hello " * 300}]}],
                   "tools": [{"functionDeclarations": declarations}]})


def bedrock_body() -> bytes:
    """Amazon Bedrock Converse, the same tools (in toolConfig) and text; the model is in the path."""
    tools = [{"toolSpec": {"name": n, "description": _describe(n), "inputSchema": {"json": _schema()}}}
             for n in TOOLS]
    return _dumps({"messages": [{"role": "user", "content": [{"text": "hello " * 300}]}],
                   "toolConfig": {"tools": tools}})


def azure_chat_body() -> bytes:
    """Azure OpenAI Chat Completions: the bench's 16 KiB chat, the deployment in the path."""
    return chat_body(16 * KIB, 20)


# --dialects: the hot check of the other dialects (Messages, Responses and Gemini remember a
# resent tools array; Bedrock Converse reads its tools every time; Azure reads as Chat does).
DIALECT_SCENARIOS = (
    ("Anthropic Messages, 20 tools, cache hot", messages_body, "/v1/messages", {}, "agent-authz-cached.yaml"),
    ("OpenAI Responses, 20 tools, cache hot", responses_body, "/v1/responses", {}, "agent-authz-cached.yaml"),
    ("Gemini, 20 tools, cache hot", gemini_body, "/v1beta/models/gpt-4o-mini:generateContent", {},
     "agent-authz-cached.yaml"),
    ("Bedrock Converse, 20 tools, cache hot", bedrock_body, "/model/gpt-4o-mini/converse", {},
     "agent-authz-cached.yaml"),
    ("Azure OpenAI chat 16 KiB, 20 tools, cache hot", azure_chat_body,
     "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", {}, "agent-authz-cached.yaml"),
)


def instructions(dump_dir: Path) -> int:
    """Total Ir over the dump files callgrind_control -d wrote (one per thread)."""
    total = 0
    for f in dump_dir.glob("callgrind.out.*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                total += int(line.split()[1])
                break
    return total


def counted(pid: int, dumps: Path, drive: Callable[[], T]) -> T:
    """Runs `drive` with the counters of the callgrind process `pid` zeroed before and dumped
    (into `dumps`, once written) after, so the dump holds exactly what `drive` made it do."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    result = drive()
    for old in dumps.glob("callgrind.out.*"):
        old.unlink()
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.time() + 60
    while not list(dumps.glob("callgrind.out.*")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    return result


def measure(binary: Path, grpc_load: Path, scenario: tuple, checks: int, cerbos_port: int, run: Path,
            issuer: Issuer, jwks: Path) -> float:
    name, body, path, headers, template = scenario
    d = Path(tempfile.mkdtemp(prefix="cg-", dir=run))
    grpc, admin = free_port(), free_port()
    config = yaml.safe_load((BENCH / template).read_text())
    config["server"]["grpc_address"] = f"127.0.0.1:{grpc}"
    config["admin"]["address"] = f"127.0.0.1:{admin}"
    config["cerbos"]["address"] = f"http://127.0.0.1:{cerbos_port}"
    config["cerbos"]["timeout"] = "5s"  # callgrind slows agent-authz ~50x, not Cerbos
    config["identity"]["jwt"]["jwks"]["file"] = str(jwks)
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "body.json").write_bytes(body())
    (d / "tokens.txt").write_text(issuer.mint("alice", **principal_claims(None)) + "\n")
    spec = {"method": "POST", "path": path, "host": "gateway", "body_file": str(d / "body.json"),
            "tokens_file": str(d / "tokens.txt"),
            "headers": {"content-type": "application/json", **{k.lower(): v for k, v in headers.items()}}}
    (d / "spec.json").write_text(json.dumps(spec))
    procs = Procs(d)
    try:
        procs.spawn("agent_authz", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/callgrind.out.%p",
                                    "--dump-line=no", str(binary), "serve", "--config", str(d / "config.yaml")],
                    env={"RUST_LOG": "warn"})
        procs.wait_ready("agent_authz", lambda: http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200, timeout=120)
        load = [str(grpc_load), "--target", "ext-authz", "--addr", f"http://127.0.0.1:{grpc}",
                "--spec", str(d / "spec.json"), "--concurrency", "1", "--max-seconds", "600"]
        warm = subprocess.run(load + ["--requests", "50", "--warmup", "0"], check=True, capture_output=True, text=True)
        outcomes = json.loads(warm.stdout.strip().splitlines()[-1])["outcomes"]
        if set(outcomes) != {"grpc_0"}:
            # A refused check takes another path: counting it would mislead.
            raise SystemExit(f"{name}: the checks are not all allowed: {outcomes}")
        counted(procs.pid("agent_authz"), d, lambda: subprocess.run(
            load + ["--requests", str(checks), "--warmup", "0"], check=True, capture_output=True))
        return instructions(d) / checks
    finally:
        procs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", help="NAME=path/to/agent-authz (the first is the baseline)")
    parser.add_argument("--checks", type=int, default=300)
    parser.add_argument("--grpc-load", default=str(Path("target/release/examples/grpc_load")))
    parser.add_argument("--out", default=None)
    parser.add_argument("--dialects", action="store_true",
                        help="also the hot check of Messages, Responses, Gemini, Bedrock Converse and Azure chat")
    args = parser.parse_args()
    builds = [(b.split("=", 1)[0], Path(b.split("=", 1)[1]).resolve()) for b in args.builds]
    run = Path(tempfile.mkdtemp(prefix="agent-authz-callgrind-"))
    issuer = Issuer()
    jwks = run / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    cerbos_grpc, cerbos_http = free_port(), free_port()
    cerbos = yaml.safe_load((BENCH / "cerbos.yaml").read_text())
    cerbos["server"]["grpcListenAddr"] = f"127.0.0.1:{cerbos_grpc}"
    cerbos["server"]["httpListenAddr"] = f"127.0.0.1:{cerbos_http}"
    cerbos["storage"]["disk"]["directory"] = str(BENCH / "policies")
    cerbos.setdefault("telemetry", {})["disabled"] = True
    (run / "cerbos.yaml").write_text(yaml.safe_dump(cerbos))
    procs = Procs(run)
    results: dict[str, dict[str, float]] = {}
    try:
        procs.spawn("cerbos", [str(TOOLS_BIN / "cerbos"), "server", f"--config={run / 'cerbos.yaml'}"],
                    env={"CERBOS_NO_TELEMETRY": "1"})
        procs.wait_ready("cerbos", lambda: tcp_open(cerbos_grpc))
        for scenario in SCENARIOS + (DIALECT_SCENARIOS if args.dialects else ()):
            for name, binary in builds:
                per_check = measure(binary, Path(args.grpc_load), scenario, args.checks, cerbos_grpc, run,
                                    issuer, jwks)
                results.setdefault(scenario[0], {})[name] = per_check
                print(f"{scenario[0]:40} {name:6} {per_check:12,.0f} instructions per check", flush=True)
    finally:
        procs.stop()
    base = builds[0][0]
    names = [n for n, _ in builds]
    header = ["scenario", *names, *(f"{n}/{base}" for n in names[1:])]
    print("\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for scenario, row in results.items():
        cells = [scenario, *(f"{row[n]:,.0f}" for n in names), *(f"{row[n] / row[base]:.3f}" for n in names[1:])]
        print("| " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
