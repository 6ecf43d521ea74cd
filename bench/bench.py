#!/usr/bin/env python3
"""The cost of enforcement, against its baselines, in one run. Called by bench/run.sh (which
builds everything first); writes bench/RESULTS.md and bench/results.json.

Starts, on free 127.0.0.1 ports, from a fresh temporary directory:
  - Cerbos (.tools/bin/cerbos) with the bench-only policies in bench/policies/,
  - the fast upstream (examples/bench_upstream.rs),
  - the allow-all ext_authz server (examples/allow_all.rs), baseline (b),
  - the same asking Cerbos one fixed question per check (examples/ask_cerbos.rs), floor (f) of
    an uncached check, once agent-authz has shown which question a 1 KiB chat asks,
  - agent-authz twice: bench/agent-authz.yaml (cache off) and bench/agent-authz-cached.yaml,
  - one Envoy (.tools/bin/envoy) with bench/envoy.yaml: listeners (direct, allow-all, the
    floor, agent-authz, agent-authz cached, the SSE pairs) in front of the same upstream.
Then drives load from separate processes, each bounded in time or count:
  - wrk (bench/wrk_fixed.lua, bench/wrk_rotate.lua) through Envoy, at each concurrency level,
  - examples/grpc_load.rs against Cerbos alone (baseline (c), the same CheckResources
    agent-authz sent, taken from its decision log) and against agent-authz alone (no Envoy).
Around every measured run it reads /proc/<pid>/stat (utime+stime) of every server process and
their VmHWM (reset through /proc/<pid>/clear_refs before the run, so it is the run's own peak).

With BENCH_LITELLM=1 (bench/run.sh --with-litellm) it also runs a peer, last, on the same
upstream and bodies: LiteLLM's proxy (litellm[proxy]==LITELLM_VERSION, installed on first use
into its own venv, .tools/litellm-venv, ~750 MiB, ~1 min) with its tool_permission guardrail
(bench/litellm.yaml), one process, measured by wrk straight to it (its master key as the bearer
token) at the same concurrency levels, CPU and peak RSS summed over its process tree. Its
connect() calls are traced (strace, when installed) to show that it reached nothing but the
upstream. Without the flag nothing of it runs, and RESULTS.md says so.

Knobs (environment): BENCH_DURATION (s per measured wrk run, default 5), BENCH_WARMUP (s,
default 1), BENCH_CONCURRENCY (default "1,16"), BENCH_TOKENS (distinct principals, default
1000), BENCH_KEEP_DIR=1 (keep the run directory with every log), BENCH_OUT (default bench/),
BENCH_QUIET_WAIT (s to wait for other work on the machine to settle first, default 120),
BENCH_AGENT_AUTHZ (the agent-authz binary, default the one in the binaries' directory; bench/run.sh
sets it to the PGO build), BENCH_BUILD (what that binary is, for the report: "pgo" or "release"),
BENCH_MAX_SECONDS (bound on the whole run, default 1800, not counting the LiteLLM install),
BENCH_LITELLM=1 (the LiteLLM peer), BENCH_ONLY=litellm (only what the peer is compared with: the
1 KiB and 16 KiB scenarios, their baselines (a), (b), (c), the cached 16 KiB scenario and the
peer; implies BENCH_LITELLM=1), BENCH_ONLY=targets (what issue 17's targets and the SSE answers
need: the same scenarios through Envoy, Cerbos alone, agent-authz alone, the SSE answers; no
memory run), BENCH_PIN=1 (servers on CPU BENCH_PIN_SERVERS, default 0, load generators on
BENCH_PIN_LOAD, default 1, with taskset; Envoy one worker), BENCH_BIN_DIR (prebuilt binaries
instead of target/release), BENCH_SSE_DELTAS (text deltas per streamed answer, default 200),
BENCH_SSE_INTERVAL_US (pause between the paced answer's events, default 1000),
BENCH_RETRY_SECONDS (bound on the time spent repeating runs the speed probe found slow).

The SSE answers (issue 15's response leg): examples/sse_load.rs through four more Envoy listeners
(ext_authz + ext_proc as envoy/llm-gateway.yaml wires them, the response leg off and on, cache on
and off) reads streamed answers from the upstream (x-bench-sse), time to first byte and total.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import jwt as pyjwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

# Process and HTTP helpers shared with the end-to-end harness.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
from stack import die_with_parent, free_port, http_get, jwk_for, tcp_open  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# Where the binaries are: target/release (what bench/run.sh builds), or BENCH_BIN_DIR, e.g. a
# prebuilt release: agent-authz and the examples, in examples/ when there is one, else beside it.
RELEASE = Path(os.environ.get("BENCH_BIN_DIR") or REPO / "target" / "release").resolve()
EXAMPLES = RELEASE / "examples" if (RELEASE / "examples").is_dir() else RELEASE
TOOLS_BIN = REPO / ".tools" / "bin"
# The agent-authz binary measured: BENCH_AGENT_AUTHZ, e.g. the PGO build bench/run.sh makes
# (scripts/build-pgo.sh), else the one in RELEASE. BENCH_BUILD says what it is, for the report.
AGENT_AUTHZ = Path(os.environ.get("BENCH_AGENT_AUTHZ") or RELEASE / "agent-authz").resolve()
BUILD = os.environ.get("BENCH_BUILD", "").strip()

ISSUER = "https://issuer.agent-authz.bench"
AUDIENCE = "agent-gateway"
KID = "bench-key-1"

# wrk takes whole seconds.
DURATION = max(1, int(os.environ.get("BENCH_DURATION", "5")))
WARMUP = max(1, int(os.environ.get("BENCH_WARMUP", "1")))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,16").split(",") if c.strip()]
N_TOKENS = int(os.environ.get("BENCH_TOKENS", "1000"))
OUT = Path(os.environ.get("BENCH_OUT", str(BENCH)))
KEEP_DIR = bool(os.environ.get("BENCH_KEEP_DIR"))
QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT", "120"))
# The whole run is bounded: every child has a timeout, and this guards the sum (restarted after
# the LiteLLM install, whose time depends on the registry, not on this machine).
MAX_SECONDS = float(os.environ.get("BENCH_MAX_SECONDS", "1800"))
RUN_DEADLINE = time.monotonic() + MAX_SECONDS
# A measured run is repeated (at most SLOW_RETRIES times) when a speed probe around it was over
# SLOW_MACHINE times slower than the run's fastest (see Bench.probe).
SLOW_MACHINE = 1.5
SLOW_RETRIES = 2
# Seconds the repeats may add to the whole run (BENCH_RETRY_SECONDS, default unbounded; bench/run.sh
# --pin bounds it so that its two runs keep within their time): once spent, a slow run is kept
# and marked instead of repeated.
RETRY_SECONDS = float(os.environ.get("BENCH_RETRY_SECONDS", "inf"))
# A subset, for a quicker run: "litellm" = the LiteLLM peer and what it is compared with;
# "targets" = what issue 17's targets and the SSE answers need (bench/run.sh --pin runs it twice,
# unpinned and pinned).
ONLY = os.environ.get("BENCH_ONLY", "").strip()
ONLY_CHOICES = ("", "litellm", "targets")
# Pinned mode (BENCH_PIN=1): every server on CPU BENCH_PIN_SERVERS (default 0), the load
# generators (and this script) on CPU BENCH_PIN_LOAD (default 1), with taskset; Envoy runs one
# worker. So every microsecond of CPU a server spends shows up as latency instead of hiding in
# the spare CPU.
PIN = os.environ.get("BENCH_PIN", "") not in ("", "0")
PIN_SERVERS = os.environ.get("BENCH_PIN_SERVERS", "0")
PIN_LOAD = os.environ.get("BENCH_PIN_LOAD", "1")
ENVOY_WORKERS = 1 if PIN else 2
# The SSE scenarios (issue 15's response leg): text deltas per answer, and the pause between
# two events of a paced answer.
SSE_DELTAS = int(os.environ.get("BENCH_SSE_DELTAS", "200"))
# The paced streamed answer runs this many DURATIONs (~100 answers at the defaults).
PACED_DURATION_FACTOR = 4
SSE_INTERVAL_US = int(os.environ.get("BENCH_SSE_INTERVAL_US", "1000"))
WITH_LITELLM = os.environ.get("BENCH_LITELLM", "") not in ("", "0") or ONLY == "litellm"
# The scenarios BENCH_ONLY=litellm keeps: every row the peer's section and the headline read.
ONLY_LITELLM_SCENARIOS = {"a_1k", "b_1k", "a_16k", "b_16k", "chat_1k_0tools", "chat_16k_20tools", "repeat_cache"}
# BENCH_ONLY=targets keeps the same through Envoy (issue 17's targets read no other), Cerbos
# alone for their questions, agent-authz alone and the SSE answers (no memory run).
ONLY_TARGET_SCENARIOS = ONLY_LITELLM_SCENARIOS | {"f_1k"}


def server_argv(argv: list[str]) -> list[str]:
    """A server's command line: on the servers' CPU when pinned (taskset execs it: same pid)."""
    return ["taskset", "-c", PIN_SERVERS] + argv if PIN else argv


def load_argv(argv: list[str]) -> list[str]:
    """A load generator's command line: on the load generators' CPU when pinned."""
    return ["taskset", "-c", PIN_LOAD] + argv if PIN else argv

# The LiteLLM peer: pinned, in a venv of its own (it is ~750 MiB and pins its own FastAPI,
# pydantic, openai...; it must not leak into .tools/venv). 1.108.7 is the newest release whose
# [proxy] extra resolves from the PyPI this project reaches (later ones require litellm-proxy,
# litellm-enterprise or litellm-proxy-extras releases it does not have).
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = REPO / ".tools" / "litellm-venv"
# Everything LiteLLM would otherwise fetch from the internet at start-up or in the background:
# the model cost map and other JSON files from GitHub, and its telemetry.
LITELLM_OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY_DISABLED": "True",
}

# The port numbers written in bench/envoy.yaml, and what each one is.
ENVOY_TEMPLATE_PORTS = {
    9901: "envoy_admin",
    10001: "listener_direct",
    10002: "listener_allow_all",
    10003: "listener_authz",
    10004: "listener_authz_cached",
    10005: "listener_sse_off",
    10006: "listener_sse_on",
    10007: "listener_sse_off_uncached",
    10008: "listener_sse_on_uncached",
    10009: "listener_ask_cerbos",
    8081: "upstream",
    9291: "allow_all",
    9292: "ask_cerbos",
    9191: "authz",
    9193: "authz_cached",
}

# The 20 tools every multi-tool body declares; bench/policies/llm_tool.yaml allows them all.
TOOLS = [
    "get_weather", "lookup_ticket", "refund", "search_kb", "create_ticket", "update_ticket",
    "close_ticket", "escalate_ticket", "add_note", "list_orders", "get_order", "cancel_order",
    "get_customer", "update_customer", "list_invoices", "get_invoice", "send_email",
    "schedule_call", "translate_text", "summarize_text",
]

KIB = 1024
MIB = 1024 * 1024
# The tool examples/bench_upstream.rs's streamed tool answer calls (x-bench-sse: tool), and what
# its arguments must carry to be allowed (bench/policies/llm_tool.yaml: alice's own ticket).
SSE_TOOL = "lookup_ticket"
SSE_TOOL_EXPECT = ['"name":"lookup_ticket"', 'T-100']
# What the streamed text answer (x-bench-sse: text:<SSE_DELTAS>) must end with to count as whole.
SSE_TEXT_EXPECT = [f'"word{SSE_DELTAS - 1} "']


def answered_as_expected(s: dict, out: dict) -> bool:
    """A wrk run of scenario `s` had every request answered, each with the scenario's status:
    none refused when it expects 200, every one when it expects a refusal."""
    errors = out["errors"]
    hard = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    return hard == 0 and errors["status"] == (0 if s["expect"] == 200 else out["requests"])


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- keys and tokens
class Issuer:
    """An RS256 identity provider: one key, its JWKS, and tokens minted on demand."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwks(self) -> dict:
        return {"keys": [jwk_for(self.key, KID)]}

    def mint(self, sub: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + 3 * 3600}
        payload.update(claims)
        return pyjwt.encode(payload, self.pem, algorithm="RS256", headers={"kid": KID})


def principal_claims(i: int | None) -> dict:
    """Claims of the support agent `alice` (i None) or of distinct agent number i."""
    return {
        "roles": ["support"],
        "allowed_models": ["gpt-4o-mini"],
        "assigned_ticket": "T-100" if i is None else f"T-{1000 + i}",
        "refund_limit_cents": 100000,
        "team": "support-emea",
    }


# --------------------------------------------------------------------------- request bodies
WORDS = ("the customer reports that the invoice total does not match the order and asks for a "
         "refund of the duplicate charge before the end of the billing period please check the "
         "ticket history and the previous conversation for context then answer politely").split()


def prose(rng: random.Random, n_chars: int) -> str:
    out: list[str] = []
    size = 0
    while size <= n_chars:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n_chars]


def tool_declaration(name: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name.replace('_', ' ').capitalize()} for the current customer. Use it only when the "
                           "user explicitly asks for it, and never guess identifiers: ask for them instead.",
            "parameters": {
                "type": "object",
                "properties": {
                    "ticket_id": {"type": "string", "description": "The ticket identifier, e.g. T-100."},
                    "customer_id": {"type": "string", "description": "The customer identifier."},
                    "query": {"type": "string", "description": "Free-text query or note."},
                    "amount_cents": {"type": "integer", "minimum": 0, "description": "Amount in cents."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
                },
                "required": ["ticket_id"],
                "additionalProperties": False,
            },
        },
    }


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def pad_to(body: dict, size: int, rng: random.Random) -> bytes:
    """Fills the last message's content so that the encoded body is exactly `size` bytes."""
    body["messages"][-1]["content"] = ""
    base = len(dumps(body))
    if base > size:
        raise BenchError(f"body skeleton is {base} bytes, more than {size}")
    body["messages"][-1]["content"] = prose(rng, size - base)
    data = dumps(body)
    assert len(data) == size, (len(data), size)
    return data


def chat_body(size: int, n_tools: int, model: str = "gpt-4o-mini", conversation: bool = False) -> bytes:
    rng = random.Random(size * 31 + n_tools)
    messages: list[dict] = [{"role": "system", "content": "You are a careful support assistant. " + prose(rng, 300)}]
    body: dict = {"model": model, "messages": messages, "temperature": 0.2, "max_tokens": 512}
    if n_tools:
        body["tools"] = [tool_declaration(t) for t in TOOLS[:n_tools]]
        body["tool_choice"] = "auto"
    if conversation:
        # An agent loop: user turn, assistant tool call, tool result, assistant answer, repeated.
        turn = 0
        while True:
            call_id = f"call_{turn:05d}"
            tool = TOOLS[turn % len(TOOLS)]
            new = [
                {"role": "user", "content": prose(rng, rng.randint(200, 700))},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": call_id, "type": "function",
                    "function": {"name": tool, "arguments": json.dumps({"ticket_id": "T-100", "query": prose(rng, 60)})}}]},
                {"role": "tool", "tool_call_id": call_id,
                 "content": json.dumps({"status": "ok", "items": [{"id": i, "note": prose(rng, 80)} for i in range(4)]})},
                {"role": "assistant", "content": prose(rng, rng.randint(150, 500))},
            ]
            trial = dict(body, messages=messages + new + [{"role": "user", "content": ""}])
            if len(dumps(trial)) > size - 64:
                break
            messages.extend(new)
            turn += 1
    messages.append({"role": "user", "content": ""})
    return pad_to(body, size, rng)


def sse_chat_body() -> bytes:
    """A 2 KiB streamed chat (`"stream": true`) declaring the one tool the SSE tool answer calls."""
    rng = random.Random(77)
    body: dict = {"model": "gpt-4o-mini", "stream": True, "tools": [tool_declaration(SSE_TOOL)], "tool_choice": "auto",
                  "messages": [{"role": "system", "content": "You are a careful support assistant."},
                               {"role": "user", "content": ""}]}
    return pad_to(body, 2 * KIB, rng)


def mcp_call_body() -> bytes:
    return dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                  "params": {"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 2500,
                                                              "reason": "duplicate charge"}}})


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


# --------------------------------------------------------------------------- processes
def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post_headers(url: str, body: bytes, headers: dict[str, str],
                      timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Like http_post, with the answer's headers (lower-cased names)."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class Procs:
    """The server processes this run started (and only those), stopped by process group."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.popen: dict[str, subprocess.Popen] = {}
        self.how: dict[str, tuple[list[str], dict[str, str] | None]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.how[name] = (argv, env)
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(self.dir / f"{name}.log", "ab") as err, open(self.dir / f"{name}.stdout.log", "ab") as out:
            self.popen[name] = subprocess.Popen(server_argv(argv), cwd=REPO, env=full_env, stdin=subprocess.DEVNULL,
                                                stdout=out, stderr=err, preexec_fn=die_with_parent)

    def pid(self, name: str) -> int:
        return self.popen[name].pid

    def wait_ready(self, name: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.popen[name].poll()
            if code is not None:
                raise BenchError(f"{name} exited with {code} before it was ready:\n{self.tail(name)}")
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{name} not ready within {timeout:.0f}s:\n{self.tail(name)}")
            time.sleep(0.1)

    def check_alive(self) -> None:
        for name, p in self.popen.items():
            if p.poll() is not None:
                raise BenchError(f"{name} exited with {p.returncode} during the run:\n{self.tail(name)}")

    def tail(self, name: str, lines: int = 30) -> str:
        parts = []
        for suffix in (".log", ".stdout.log"):
            path = self.dir / f"{name}{suffix}"
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def kill(self, name: str) -> None:
        p = self.popen[name]
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)

    def restart(self, name: str, ready: Callable[[], bool]) -> None:
        self.kill(name)
        self.spawn(name, *self.how[name])
        self.wait_ready(name, ready)

    def stop(self) -> None:
        for name in reversed(list(self.popen)):
            self.kill(name)


# --------------------------------------------------------------------------- /proc readings
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # fields from 3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15


def cpu_seconds_with_reaped(pid: int) -> float:
    """utime + stime + cutime + cstime: the process and its children that have exited and been
    waited for. Summed over a process tree before and after a run, the difference counts a child
    that exits during the run exactly once (its parent's cutime takes over its CPU)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / CLK_TCK  # fields 14 to 17


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from the ppid field of /proc/<pid>/stat."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            parent[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        tree += frontier
    return tree


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of a process tree (see cpu_seconds_with_reaped); a process that exited since
    the tree was listed counts as 0 (its CPU is in its parent's cutime)."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds_with_reaped(pid)
        except OSError:
            pass
    return total


def vm_kib(pid: int, key: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0  # exited meanwhile (only possible in a process tree)
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int) -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so the next reading is this run's peak."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def machine_cpu() -> tuple[float, float, float]:
    """(task, interrupt, steal) CPU seconds of the whole machine so far, from /proc/stat: time
    charged to processes (user, nice, system), time in interrupts (irq, softirq: loopback
    networking lands there, charged to no process), and hypervisor steal."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system) / CLK_TCK, (irq + softirq) / CLK_TCK, steal / CLK_TCK


def children_cpu() -> float:
    """CPU seconds of this script's finished children (the load generators)."""
    t = os.times()
    return t.children_user + t.children_system


def wait_for_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Waits (at most `max_wait` s) until the machine is mostly idle before the stack starts:
    other work on these CPUs would be measured as ours. Returns the last busy share seen."""
    deadline = time.monotonic() + max_wait
    while True:
        task0, irq0, _ = machine_cpu()
        time.sleep(2)
        task1, irq1, _ = machine_cpu()
        share = (task1 + irq1 - task0 - irq0) / 2 / (os.cpu_count() or 1)
        if share <= threshold or time.monotonic() > deadline:
            return share
        log(f"machine {share * 100:.0f} % busy with other work; waiting for it to settle")


def metric(admin_port: int, name: str) -> float:
    status, body = http_get(f"http://127.0.0.1:{admin_port}/metrics")
    if status != 200:
        return float("nan")
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                total += float(value)
    return total


# --------------------------------------------------------------------------- the LiteLLM peer
def litellm_installed_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                          capture_output=True, text=True, timeout=120)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_litellm() -> None:
    """Installs litellm[proxy]==LITELLM_VERSION into its own venv, unless it is there already.
    Before the stack starts and the clock runs: pip's CPU must not land in any measured run."""
    have = litellm_installed_version()
    if have == LITELLM_VERSION and (LITELLM_VENV / "bin" / "litellm").exists():
        log(f"LiteLLM peer: litellm {have} in {LITELLM_VENV}")
        return
    log(f"LiteLLM peer: installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} "
        f"({'replacing ' + have if have else 'first use'}; ~750 MiB, about a minute)")
    if not (LITELLM_VENV / "bin" / "python").exists():
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(LITELLM_VENV)],
                       check=True, timeout=300)
    done = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                           f"litellm[proxy]=={LITELLM_VERSION}"], timeout=1800)
    if done.returncode != 0 or litellm_installed_version() != LITELLM_VERSION:
        raise BenchError(f"pip install litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} failed")


def strace_works() -> bool:
    """strace with seccomp-bpf (>= 5.3), and ptrace allowed here."""
    if shutil.which("strace") is None:
        return False
    done = subprocess.run(["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", os.devnull, "true"],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def connect_destinations(trace: str) -> dict[str, int]:
    """Counts the connect() calls in an strace log by destination ("127.0.0.1:8081", "AF_UNIX")."""
    counts: dict[str, int] = {}
    for line in trace.splitlines():
        if "connect(" not in line:
            continue
        v4 = re.search(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)', line)
        v6 = re.search(r'sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"', line)
        family = re.search(r"sa_family=(AF_\w+)", line)
        if v4 or v6:
            port, addr = (v4 or v6).groups()
            key = f"{addr}:{port}" if v4 else f"[{addr}]:{port}"
        else:
            key = family.group(1) if family else "unparsed: " + line[:120]
        counts[key] = counts.get(key, 0) + 1
    return counts


def socket_peers(pids: list[int], listen_port: int) -> list[str]:
    """The peers of the TCP connections these processes opened and hold right now (`ss -tnp`);
    connections accepted on `listen_port` (from the load generator) are left out."""
    try:
        done = subprocess.run(["ss", "-tnp"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    marks = tuple(f"pid={p}," for p in pids)
    peers = []
    for line in done.stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 5 and any(m in line for m in marks) and not cols[3].endswith(f":{listen_port}"):
            peers.append(cols[4])
    return peers


# --------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="agent-authz-bench-"))
        self.ports = {v: free_port() for v in ENVOY_TEMPLATE_PORTS.values()}
        self.ports.update({k: free_port() for k in ("authz_admin", "authz_cached_admin", "cerbos_grpc", "cerbos_http")})
        self.procs = Procs(self.run_dir)
        self.issuer = Issuer()
        self.files: dict[str, Path] = {}
        self.tokens: dict[str, str] = {}
        self.cerbos_specs: dict[str, Path] = {}
        self.results: dict[str, Any] = {"http": {}, "cerbos": {}, "cerbos_paced": {}, "direct": {}, "direct_uncached": {},
                                        "sse": {}, "litellm": {"ran": False}}
        self.fastest_probe = float("inf")
        self.retry_spent = 0.0  # seconds spent repeating runs measured on a slow machine
        self.probe_spec: Path | None = None
        self.tracked = ["agent_authz", "agent_authz_cached", "cerbos", "envoy", "upstream", "allow_all", "ask_cerbos"]
        # Measured as a whole process tree (CPU and peak RSS summed), not as one process.
        self.trees = {"litellm"}
        if WITH_LITELLM:
            self.ports["listener_litellm"] = free_port()
            self.litellm_key = "sk-bench-" + secrets.token_hex(16)

    # ------------------------------------------------------------------ setup
    def write_files(self) -> None:
        d = self.run_dir
        (d / "jwks.json").write_text(json.dumps(self.issuer.jwks()))
        bodies = {
            "chat_1k": chat_body(1 * KIB, 0),
            "chat_1k_denied": chat_body(1 * KIB, 0, model="gpt-4o"),
            "chat_16k_20tools": chat_body(16 * KIB, 20),
            "chat_256k_20tools": chat_body(256 * KIB, 20, conversation=True),
            "chat_1m_20tools": chat_body(1 * MIB, 20, conversation=True),
            "mcp_call": mcp_call_body(),
            "chat_sse": sse_chat_body(),
        }
        for name, data in bodies.items():
            path = d / f"{name}.json"
            path.write_bytes(data)
            self.files[name] = path
        log("minting tokens (1 repeating principal + %d distinct)" % N_TOKENS)
        self.tokens["alice"] = self.issuer.mint("alice", **principal_claims(None))
        distinct = [self.issuer.mint(f"agent-{i:04d}", **principal_claims(i)) for i in range(N_TOKENS)]
        self.files["tokens"] = d / "tokens.txt"
        self.files["tokens"].write_text("\n".join(distinct) + "\n")

        # Cerbos
        cerbos = yaml.safe_load((BENCH / "cerbos.yaml").read_text())
        cerbos["server"]["grpcListenAddr"] = f"127.0.0.1:{self.ports['cerbos_grpc']}"
        cerbos["server"]["httpListenAddr"] = f"127.0.0.1:{self.ports['cerbos_http']}"
        cerbos["storage"]["disk"]["directory"] = str(BENCH / "policies")
        cerbos.setdefault("telemetry", {})["disabled"] = True
        (d / "cerbos.yaml").write_text(yaml.safe_dump(cerbos, sort_keys=False))

        # agent-authz, both instances
        for name, template, grpc, admin in (
            ("agent-authz", "agent-authz.yaml", "authz", "authz_admin"),
            ("agent-authz-cached", "agent-authz-cached.yaml", "authz_cached", "authz_cached_admin"),
        ):
            config = yaml.safe_load((BENCH / template).read_text())
            config["server"]["grpc_address"] = f"127.0.0.1:{self.ports[grpc]}"
            config["admin"]["address"] = f"127.0.0.1:{self.ports[admin]}"
            config["cerbos"]["address"] = f"http://127.0.0.1:{self.ports['cerbos_grpc']}"
            config["identity"]["jwt"]["jwks"]["file"] = str(d / "jwks.json")
            (d / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        # Envoy
        def port(match: re.Match) -> str:
            n = int(match.group(1))
            if n not in ENVOY_TEMPLATE_PORTS:
                raise BenchError(f"bench/envoy.yaml has an unexpected port_value {n}")
            return f"port_value: {self.ports[ENVOY_TEMPLATE_PORTS[n]]}"

        (d / "envoy.yaml").write_text(re.sub(r"port_value:\s*(\d+)", port, (BENCH / "envoy.yaml").read_text()))
        if WITH_LITELLM:
            self.write_litellm_files()

    def write_litellm_files(self) -> None:
        """bench/litellm.yaml with this run's upstream port and master key, and the body with one
        tool the guardrail must refuse."""
        config = yaml.safe_load((BENCH / "litellm.yaml").read_text())
        guardrail = config["guardrails"][0]
        rules = guardrail["litellm_params"]["rules"]
        allowed = {r["tool_name"] for r in rules if r["decision"] == "allow"}
        if allowed != set(TOOLS):
            # Otherwise the peer would answer 400 (or let through tools agent-authz denies).
            raise BenchError(f"bench/litellm.yaml allows {sorted(allowed ^ set(TOOLS))} differently from TOOLS")
        for model in config["model_list"]:
            model["litellm_params"]["api_base"] = f"http://127.0.0.1:{self.ports['upstream']}/v1"
        config["general_settings"]["master_key"] = self.litellm_key
        (self.run_dir / "litellm.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.litellm_guardrail = guardrail["guardrail_name"]

        denied = json.loads(self.files["chat_16k_20tools"].read_bytes())
        denied["tools"][-1]["function"]["name"] = "delete_all_tickets"  # matches no rule: default deny
        self.files["chat_16k_denied_tool"] = self.run_dir / "chat_16k_denied_tool.json"
        self.files["chat_16k_denied_tool"].write_bytes(dumps(denied))

    def start(self) -> None:
        p, d = self.procs, self.run_dir
        p.spawn("cerbos", [str(TOOLS_BIN / "cerbos"), "server", f"--config={d / 'cerbos.yaml'}"],
                env={"CERBOS_NO_TELEMETRY": "1"})
        p.spawn("upstream", [str(EXAMPLES / "bench_upstream"), f"127.0.0.1:{self.ports['upstream']}", "1"])
        p.spawn("allow_all", [str(EXAMPLES / "allow_all"), f"127.0.0.1:{self.ports['allow_all']}"])
        p.wait_ready("cerbos", lambda: http_get(f"http://127.0.0.1:{self.ports['cerbos_http']}/_cerbos/health")[0] == 200)
        p.wait_ready("upstream", lambda: tcp_open(self.ports["upstream"]))
        p.wait_ready("allow_all", lambda: tcp_open(self.ports["allow_all"]))
        for name, config, admin in (("agent_authz", "agent-authz.yaml", "authz_admin"),
                                    ("agent_authz_cached", "agent-authz-cached.yaml", "authz_cached_admin")):
            p.spawn(name, [str(AGENT_AUTHZ), "serve", "--config", str(d / config)], env={"RUST_LOG": "warn"})
            p.wait_ready(name, lambda a=admin: http_get(f"http://127.0.0.1:{self.ports[a]}/readyz")[0] == 200)
        p.spawn("envoy", [str(TOOLS_BIN / "envoy"), "-c", str(d / "envoy.yaml"), "--concurrency", str(ENVOY_WORKERS),
                          "--disable-hot-restart", "--base-id", str(random.randrange(1000, 60000)),
                          "--log-level", "warn"])
        p.wait_ready("envoy", lambda: http_get(f"http://127.0.0.1:{self.ports['envoy_admin']}/ready")[0] == 200)
        log(f"stack up in {d}")

    def start_floor(self, question: str) -> None:
        """Floor (f): examples/ask_cerbos.rs asking Cerbos the question agent-authz asked for
        `question` (grpc_load's Cerbos spec, written by `sanity`), with agent-authz's runtime
        settings (worker threads as bench/agent-authz.yaml)."""
        if question not in self.cerbos_specs:
            raise BenchError(f"floor (f): agent-authz has not shown the {question!r} question yet")
        workers = yaml.safe_load((BENCH / "agent-authz.yaml").read_text())["server"].get("worker_threads")
        self.procs.spawn("ask_cerbos", [str(EXAMPLES / "ask_cerbos"), f"127.0.0.1:{self.ports['ask_cerbos']}",
                                        f"http://127.0.0.1:{self.ports['cerbos_grpc']}", str(self.cerbos_specs[question])]
                         + (["--worker-threads", str(workers)] if workers else []))
        self.procs.wait_ready("ask_cerbos", lambda: tcp_open(self.ports["ask_cerbos"]))

    def fresh(self, proc: str) -> None:
        """Restarts one agent-authz instance, so its peak RSS (and cache) is this run's alone."""
        admin = "authz_cached_admin" if proc == "agent_authz_cached" else "authz_admin"
        self.procs.restart(proc, lambda: http_get(f"http://127.0.0.1:{self.ports[admin]}/readyz")[0] == 200)

    # ------------------------------------------------------------------ scenarios
    def url(self, listener: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports['listener_' + listener]}{path}"

    def scenarios(self) -> list[dict]:
        """Every HTTP scenario through Envoy. `body` names the file, `baseline` the body whose
        (a)/(b) baselines it is compared with, `cerbos` the CheckResources set (c)."""
        chat = "/v1/chat/completions"
        out: list[dict] = []
        baseline_bodies = [("1k", "chat_1k", chat, {}), ("16k", "chat_16k_20tools", chat, {}),
                           ("256k", "chat_256k_20tools", chat, {}), ("1m", "chat_1m_20tools", chat, {}),
                           ("mcp", "mcp_call", "/mcp", MCP_HEADERS)]
        for key, body, path, headers in baseline_bodies:
            out.append({"id": f"a_{key}", "group": "a", "listener": "direct", "body": body, "path": path,
                        "headers": headers, "tokens": None, "expect": 200, "target": None, "base": key})
            out.append({"id": f"b_{key}", "group": "b", "listener": "allow_all", "body": body, "path": path,
                        "headers": headers, "tokens": None, "expect": 200, "target": "allow_all", "base": key})
            if key == "1k":
                # Floor (f) of the uncached 1 KiB check: (b) plus one Cerbos call, nothing else.
                out.append({"id": "f_1k", "group": "f", "listener": "ask_cerbos", "body": body, "path": path,
                            "headers": headers, "tokens": None, "expect": 200, "target": "ask_cerbos",
                            "base": key, "cerbos": "model"})
        authz = [
            ("chat_1k_0tools", "chat 1 KiB, 0 tools", "chat_1k", chat, {}, "fixed", 200, "1k", "model"),
            ("chat_16k_20tools", "chat 16 KiB, 20 tools", "chat_16k_20tools", chat, {}, "fixed", 200, "16k", "model_20tools"),
            ("chat_256k_20tools", "chat 256 KiB conversation, 20 tools", "chat_256k_20tools", chat, {}, "fixed", 200, "256k", "model_20tools"),
            ("chat_1m_20tools", "chat 1 MiB conversation, 20 tools", "chat_1m_20tools", chat, {}, "fixed", 200, "1m", "model_20tools"),
            ("mcp_tools_call", "MCP tools/call (refund, small arguments)", "mcp_call", "/mcp", MCP_HEADERS, "fixed", 200, "mcp", "mcp_refund"),
            ("denied_model", "chat 1 KiB, denied model (403)", "chat_1k_denied", chat, {}, "fixed", 403, "1k", "denied_model"),
            ("distinct_nocache", f"16 KiB/20 tools, {N_TOKENS} distinct principals, cache off", "chat_16k_20tools", chat, {}, "rotate", 200, "16k", "model_20tools"),
            ("repeat_cache", "16 KiB/20 tools, same principal, cache on", "chat_16k_20tools", chat, {}, "fixed", 200, "16k", "model_20tools"),
            ("distinct_cache", f"16 KiB/20 tools, {N_TOKENS} distinct principals, cache on", "chat_16k_20tools", chat, {}, "rotate", 200, "16k", "model_20tools"),
        ]
        for sid, title, body, path, headers, tokens, expect, base, cerbos in authz:
            cached = sid.endswith("_cache")
            out.append({"id": sid, "title": title, "group": "authz", "listener": "authz_cached" if cached else "authz",
                        "body": body, "path": path, "headers": headers, "tokens": tokens, "expect": expect,
                        "target": "agent_authz_cached" if cached else "agent_authz", "base": base,
                        "cerbos": cerbos, "cached": cached})
        if ONLY == "litellm":
            out = [s for s in out if s["id"] in ONLY_LITELLM_SCENARIOS]
        elif ONLY == "targets":
            out = [s for s in out if s["id"] in ONLY_TARGET_SCENARIOS]
        # Body by body: (a), (b), then the scenarios compared with them, so that a scenario and
        # its baselines are measured within a minute of each other (this VM's speed drifts).
        order = [key for key, *_ in baseline_bodies]
        return sorted(out, key=lambda s: order.index(s["base"]))

    def sanity(self, scenarios: list[dict]) -> None:
        """One request per scenario before any load: the expected status, and the question
        agent-authz asked Cerbos (from its decision log) for baseline (c) and floor (f), which
        starts once that question is known (its scenarios are checked last)."""
        for s in sorted(scenarios, key=lambda s: s["group"] == "f"):
            if s["group"] == "f" and "ask_cerbos" not in self.procs.popen:
                self.start_floor(s["cerbos"])
            headers = {"Content-Type": "application/json", **s["headers"]}
            if s["tokens"]:
                headers["Authorization"] = f"Bearer {self.tokens['alice']}"
            status, body = http_post(self.url(s["listener"], s["path"]), self.files[s["body"]].read_bytes(), headers)
            if status != s["expect"]:
                raise BenchError(f"sanity: {s['id']} answered {status}, expected {s['expect']}: {body[:300]!r}\n"
                                 + self.procs.tail(s["target"] or "envoy"))
            if s["group"] == "authz" and s["cerbos"] not in self.cerbos_specs:
                record = self.last_decision(s["target"])
                spec = {"principal": {k: record["principal"][k] for k in ("id", "roles", "attr")},
                        "resources": [{k: r[k] for k in ("kind", "id", "action", "attr")} for r in record["resources"]],
                        "policy_version": "default", "scope": ""}
                path = self.run_dir / f"cerbos_{s['cerbos']}.json"
                path.write_text(json.dumps(spec, indent=1))
                self.cerbos_specs[s["cerbos"]] = path
        log("sanity: every scenario answers as expected")

    def decisions(self, proc: str, offset: int) -> list[dict]:
        """The decision records `proc` has logged from byte `offset` of its log on."""
        with open(self.run_dir / f"{proc}.stdout.log", "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{") and '"decision_id"' in line]

    def last_decision(self, proc: str) -> dict:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = (self.run_dir / f"{proc}.stdout.log").read_text(errors="replace").splitlines()
            for line in reversed(lines):
                if line.startswith("{") and '"decision_id"' in line:
                    return json.loads(line)
            time.sleep(0.05)
        raise BenchError(f"no decision in {proc}'s log")

    # ------------------------------------------------------------------ measurement
    def measure(self, run: Callable[[], dict], cache_admin: int | None = None) -> dict:
        """Runs `run` with `measure_once`; when the machine was slow around it (a speed probe
        before or after it took over SLOW_MACHINE times the run's fastest probe), runs it again,
        at most SLOW_RETRIES times, and keeps the run whose machine was fastest."""
        best = None
        for attempt in range(1 + SLOW_RETRIES):
            started = time.monotonic()
            result = self.measure_once(run, cache_admin)
            if attempt:
                self.retry_spent += time.monotonic() - started
            if best is None or result["slowdown"] < best["slowdown"]:
                best = result
            if result["slowdown"] <= SLOW_MACHINE:
                break
            if self.retry_spent >= RETRY_SECONDS:
                log(f"machine {result['slowdown']:.2f}x slower than at its fastest around this run; the "
                    f"{RETRY_SECONDS:.0f} s for repeats (BENCH_RETRY_SECONDS) are spent: kept and marked")
                break
            log(f"machine {result['slowdown']:.2f}x slower than at its fastest around this run; measuring again")
        return best

    def probe(self) -> float:
        """The machine's speed for this kind of work: the p50 of a short gRPC ping-pong (1 KiB
        chat, one connection, ~0.5 s) with the allow-all server, which is idle between runs. This
        VM shares its host, and for minutes at a time request/response work on it can run
        1.5-2.7x slower (every server's CPU per request rising together, no steal time
        reported) while plain CPU work barely slows: a wake-up-bound probe shows it."""
        if self.probe_spec is None:
            self.probe_spec = self.direct_spec("probe", "chat_1k")
        r = self.grpc_load("ext-authz", self.ports["allow_all"], self.probe_spec, 1, 100000, 0.5)
        t = r["p50_ms"]
        self.fastest_probe = min(self.fastest_probe, t)
        return t

    def measure_once(self, run: Callable[[], dict], cache_admin: int | None = None) -> dict:
        """Runs `run` (a load generator in its own process) with CPU and peak-RSS readings of
        every server process around it."""
        if time.monotonic() > RUN_DEADLINE:
            raise BenchError("BENCH_MAX_SECONDS exceeded")
        probe_before = self.probe()
        self.procs.check_alive()
        pids = {n: self.procs.pid(n) for n in self.tracked if n not in self.trees and n in self.procs.popen}
        trees = {n: self.tree_pids(n) for n in self.tracked if n in self.trees}
        for pid in list(pids.values()) + [p for tree in trees.values() for p in tree]:
            reset_peak_rss(pid)
        cache_before = (metric(cache_admin, "agent_authz_cache_hits_total"),
                        metric(cache_admin, "agent_authz_cache_misses_total")) if cache_admin else None
        before = {n: cpu_seconds(pid) for n, pid in pids.items()}
        tree_before = {n: tree_cpu(tree) for n, tree in trees.items()}
        task0, irq0, steal0 = machine_cpu()
        loadgen0 = children_cpu()
        started = time.monotonic()
        result = run()
        result["wall_s"] = time.monotonic() - started
        task1, irq1, steal1 = machine_cpu()
        result["cpu_s"] = {n: cpu_seconds(pid) - before[n] for n, pid in pids.items()}
        trees = {n: self.tree_pids(n) for n in trees}
        result["cpu_s"].update({n: tree_cpu(tree) - tree_before[n] for n, tree in trees.items()})
        # Who else used the CPUs: the load generator, and anything not started by this run.
        result["loadgen_cpu_s"] = children_cpu() - loadgen0
        result["machine_task_s"] = task1 - task0
        result["machine_irq_s"] = irq1 - irq0
        result["steal_s"] = steal1 - steal0
        result["other_cpu_s"] = max(0.0, result["machine_task_s"] - result["loadgen_cpu_s"] - sum(result["cpu_s"].values()))
        result["hwm_kib"] = {n: vm_kib(pid, "VmHWM") for n, pid in pids.items()}
        result["rss_kib"] = {n: vm_kib(pid, "VmRSS") for n, pid in pids.items()}
        # A tree's peak is the sum of its processes' peaks: an upper bound when there are several
        # (they need not peak together), exact for one.
        result["hwm_kib"].update({n: sum(vm_kib(p, "VmHWM") for p in tree) for n, tree in trees.items()})
        result["rss_kib"].update({n: sum(vm_kib(p, "VmRSS") for p in tree) for n, tree in trees.items()})
        result["processes"] = {n: len(tree) for n, tree in trees.items()}
        if cache_before:
            hits = metric(cache_admin, "agent_authz_cache_hits_total") - cache_before[0]
            misses = metric(cache_admin, "agent_authz_cache_misses_total") - cache_before[1]
            result["cache_hit_ratio"] = hits / (hits + misses) if hits + misses else float("nan")
        self.procs.check_alive()
        # After every reading: the probe's own work must not count as the run's.
        result["probe_ms"] = max(probe_before, self.probe())
        result["slowdown"] = result["probe_ms"] / self.fastest_probe
        return result

    def wrk(self, s: dict, concurrency: int, seconds: int) -> dict:
        env = {"BENCH_LUA_DIR": str(BENCH), "BENCH_PATH": s["path"], "BENCH_BODY": str(self.files[s["body"]]),
               "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in s["headers"].items())}
        script = "wrk_fixed.lua"
        if s["tokens"] == "fixed":
            env["BENCH_TOKEN"] = self.tokens["alice"]
        elif s["tokens"] == "litellm_key":
            env["BENCH_TOKEN"] = self.litellm_key  # LiteLLM takes its master key as a bearer token
        elif s["tokens"] == "rotate":
            env["BENCH_TOKENS"] = str(self.files["tokens"])
            script = "wrk_rotate.lua"
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "5s",
                "-s", str(BENCH / script), self.url(s["listener"], s["path"])]
        done = subprocess.run(load_argv(argv), env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=seconds + 60)
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                out = json.loads(line[len("BENCH_JSON "):])
                out["throughput_rps"] = out["requests"] / (out["duration_us"] / 1e6)
                for p in ("p50", "p90", "p99", "max"):
                    out[f"{p}_ms"] = out.pop(f"{p}_us") / 1000.0
                out["mean_ms"] = out.pop("mean_us") / 1000.0
                return out
        raise BenchError(f"wrk printed no result for {s['id']}: {done.stdout}\n{done.stderr}")

    def grpc_load(self, target: str, addr_port: int, spec: Path, concurrency: int, requests: int,
                  max_seconds: float, connections: int = 1, interval_us: int = 0) -> dict:
        argv = [str(EXAMPLES / "grpc_load"), "--target", target, "--addr", f"http://127.0.0.1:{addr_port}",
                "--spec", str(spec), "--concurrency", str(concurrency), "--requests", str(requests),
                "--max-seconds", str(max_seconds), "--connections", str(connections), "--threads", "1",
                "--interval-us", str(interval_us)]
        done = subprocess.run(load_argv(argv), capture_output=True, text=True, timeout=max_seconds * 2 + 60)
        if done.returncode != 0:
            raise BenchError(f"grpc_load failed: {done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def run_http(self, scenarios: list[dict]) -> None:
        for s in scenarios:
            for c in CONCURRENCY:
                if s["group"] == "authz":
                    self.fresh(s["target"])
                warm = WARMUP * (2 if s.get("cached") else 1)
                self.wrk(s, c, warm)
                admin = self.ports["authz_cached_admin"] if s.get("cached") else None
                r = self.measure(lambda: self.wrk(s, c, DURATION), cache_admin=admin)
                errors = r["errors"]
                r["ok"] = answered_as_expected(s, r)
                self.results["http"].setdefault(s["id"], {})[str(c)] = r
                log(f"{s['id']:<20} c={c:<3} {r['throughput_rps']:8.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                    f"p99 {r['p99_ms']:.3f} ms  {'ok' if r['ok'] else 'UNEXPECTED ANSWERS ' + json.dumps(errors)}")
                if s["group"] == "authz" and not s.get("cached") and ONLY != "litellm":
                    self.run_cerbos_paced(s, c)

    def run_cerbos(self) -> None:
        """Baseline (c): Cerbos alone, the same CheckResources, one HTTP/2 connection (as
        agent-authz uses), at each concurrency level."""
        for name, spec in self.cerbos_specs.items():
            for c in CONCURRENCY:
                self.grpc_load("cerbos", self.ports["cerbos_grpc"], spec, c, 300 if c == 1 else 2000, 2)
                r = self.measure(lambda: self.grpc_load("cerbos", self.ports["cerbos_grpc"], spec, c,
                                                        4000 if c == 1 else 40000, DURATION))
                r["ok"] = r["errors"] == 0
                self.results["cerbos"].setdefault(name, {})[str(c)] = r
                log(f"cerbos {name:<14} c={c:<3} {r['throughput_rps']:8.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                    f"p99 {r['p99_ms']:.3f} ms  outcomes {r['outcomes']}")

    def run_cerbos_paced(self, s: dict, c: int) -> None:
        """Baseline (c) at an uncached scenario's own pace, measured right after the scenario
        (so both see the machine in the same state): Cerbos alone, the same CheckResources,
        asked as often as agent-authz asked it (each caller starts a call at most once per
        `connections / req/s`). A hot loop asks again the moment an answer arrives, so Cerbos
        never idles; behind agent-authz it idles between calls (the rest of the request's path),
        and its Go runtime answers after an idle gap more slowly. This is Cerbos' own p50 under
        the arrival pattern agent-authz gave it."""
        spec = self.cerbos_specs[s["cerbos"]]
        rate = self.results["http"][s["id"]][str(c)]["throughput_rps"]
        interval = int(c * 1e6 / rate)
        self.grpc_load("cerbos", self.ports["cerbos_grpc"], spec, c, int(rate * WARMUP) + 1, WARMUP,
                       interval_us=interval)
        r = self.measure(lambda: self.grpc_load("cerbos", self.ports["cerbos_grpc"], spec, c,
                                                int(rate * DURATION * 2) + 10, DURATION, interval_us=interval))
        r["ok"] = r["errors"] == 0
        self.results["cerbos_paced"].setdefault(s["id"], {})[str(c)] = r
        log(f"cerbos paced {s['id']:<18} c={c:<3} every {interval} µs: {r['throughput_rps']:8.0f} req/s  "
            f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  outcomes {r['outcomes']}")

    def direct_spec(self, name: str, body: str, path: str = "/v1/chat/completions") -> Path:
        spec = self.run_dir / f"direct_{name}.json"
        spec.write_text(json.dumps({"method": "POST", "path": path, "host": "127.0.0.1",
                                    "headers": {"content-type": "application/json",
                                                "authorization": f"Bearer {self.tokens['alice']}"},
                                    "body_file": str(self.files[body])}))
        return spec

    def run_direct(self) -> None:
        """agent-authz alone: CheckRequests straight from grpc_load, no Envoy. Two connections,
        like Envoy's two workers; cache on and hot, plus the same without the cache, and the
        allow-all server fed the same way (the like-for-like floor of CPU per check)."""
        c = max(CONCURRENCY)
        runs = [("hot_cache_16k_20tools", "authz_cached", "chat_16k_20tools"),
                ("allow_all_16k_20tools", "allow_all", "chat_16k_20tools"),
                ("hot_cache_1k_0tools", "authz_cached", "chat_1k"),
                ("no_cache_16k_20tools", "authz", "chat_16k_20tools")]
        for name, instance, body in runs:
            spec = self.direct_spec(name, body)
            process = {"authz_cached": "agent_authz_cached", "authz": "agent_authz"}.get(instance, instance)
            if process != "allow_all":
                self.fresh(process)
            self.grpc_load("ext-authz", self.ports[instance], spec, c, 2000, 3, connections=2)
            admin = self.ports["authz_cached_admin"] if instance == "authz_cached" else None
            r = self.measure(lambda: self.grpc_load("ext-authz", self.ports[instance], spec, c, 200000,
                                                    DURATION + 3, connections=2), cache_admin=admin)
            r["instance"] = process
            r["concurrency"] = c
            r["ok"] = r["errors"] == 0 and set(r["outcomes"]) == {"grpc_0"}
            self.results["direct"][name] = r
            cpu = r["cpu_s"][r["instance"]]
            log(f"direct {name:<22} {r['throughput_rps']:8.0f} checks/s  {process} cpu {cpu:.2f} s  "
                f"=> {r['requests'] / cpu if cpu else float('nan'):.0f} checks per cpu-second  {r['outcomes']}")

    def run_direct_uncached(self) -> None:
        """The uncached hop without Envoy, one connection: agent-authz alone asking Cerbos,
        the allow-all server fed the same way (the hop's floor), the same asking Cerbos (the
        floor (f) of an uncached 1 KiB check) and Cerbos alone at the pace agent-authz asked it,
        each right after the other. What agent-authz adds beyond the two
        floors here is its own share of an uncached check; the rest of the gap measured through
        Envoy comes from the longer chain of processes sharing the CPUs."""
        for key, body, question in (("1k_0tools", "chat_1k", "model"),
                                    ("16k_20tools", "chat_16k_20tools", "model_20tools")):
            spec = self.direct_spec(f"uncached_{key}", body)
            out = {}
            self.fresh("agent_authz")
            servers = [("agent_authz", self.ports["authz"]), ("allow_all", self.ports["allow_all"])]
            if question == "model" and "ask_cerbos" in self.procs.popen:
                servers.append(("ask_cerbos", self.ports["ask_cerbos"]))
            for name, port in servers:
                self.grpc_load("ext-authz", port, spec, 1, 300, WARMUP)
                out[name] = self.measure(lambda: self.grpc_load("ext-authz", port, spec, 1, 100000, DURATION))
            interval = int(1e6 / out["agent_authz"]["throughput_rps"])
            cerbos_spec = self.cerbos_specs[question]
            self.grpc_load("cerbos", self.ports["cerbos_grpc"], cerbos_spec, 1, 200, WARMUP, interval_us=interval)
            out["cerbos_paced"] = self.measure(lambda: self.grpc_load("cerbos", self.ports["cerbos_grpc"], cerbos_spec,
                                                                      1, 100000, DURATION, interval_us=interval))
            self.results["direct_uncached"][key] = out
            own = out["agent_authz"]["p50_ms"] - out["allow_all"]["p50_ms"] - out["cerbos_paced"]["p50_ms"]
            log(f"direct uncached {key:<12} agent-authz p50 {out['agent_authz']['p50_ms']:.3f} ms, allow-all "
                f"{out['allow_all']['p50_ms']:.3f} ms, Cerbos paced {out['cerbos_paced']['p50_ms']:.3f} ms: "
                f"own share {own * 1000:.0f} µs")

    def sse_load(self, listener: str, answer: str, interval_us: int, expect: list[str], requests: int,
                 seconds: float) -> dict:
        """examples/sse_load.rs: one connection, the streamed chat, the answer x-bench-sse names."""
        argv = [str(EXAMPLES / "sse_load"), "--url", self.url(listener, "/v1/chat/completions"),
                "--body-file", str(self.files["chat_sse"]), "--header", f"authorization: Bearer {self.tokens['alice']}",
                "--header", f"x-bench-sse: {answer}", "--header", f"x-bench-sse-interval-us: {interval_us}",
                "--concurrency", "1", "--requests", str(requests), "--max-seconds", str(seconds)]
        for e in expect:
            argv += ["--expect", e]
        done = subprocess.run(load_argv(argv), capture_output=True, text=True, timeout=seconds * 2 + 60)
        if done.returncode != 0:
            raise BenchError(f"sse_load failed: {done.stderr}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def sse_sanity(self) -> None:
        """Before the SSE load: the response leg does read the answers on the "on" listeners (a
        tool call answer leaves a `phase: response` decision record naming the call) and not on
        the "off" ones; the tool call arrives either way (it is allowed)."""
        for listener, proc in (("sse_on", "agent_authz_cached"), ("sse_on_uncached", "agent_authz"),
                               ("sse_off", "agent_authz_cached"), ("sse_off_uncached", "agent_authz")):
            on = listener.startswith("sse_on")
            before = (self.run_dir / f"{proc}.stdout.log").stat().st_size
            r = self.sse_load(listener, "tool", 0, SSE_TOOL_EXPECT, 1, 10)
            if r["requests"] != 1:
                raise BenchError(f"SSE sanity: {listener}: {r.get('first_error')}\n" + self.procs.tail(proc))
            # The request's record, and with the leg on the answer's (written by the log thread).
            deadline = time.monotonic() + 5
            while len(self.decisions(proc, before)) < (2 if on else 1) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2 if not on else 0)  # an unexpected response record would follow the request's
            new = self.decisions(proc, before)
            judged = [rec for rec in new if rec.get("phase") == "response"
                      and any(res.get("id") == SSE_TOOL for res in rec.get("resources", []))]
            if bool(judged) != on:
                raise BenchError(f"SSE sanity: {listener}: {proc} logged {len(judged)} judgements of the answer's "
                                 f"tool call (expected {int(on)}): {json.dumps(new)[:800]}")
        log("SSE sanity: the response leg judges the tool call on the 'on' listeners only; it arrives on all")

    def run_sse(self) -> None:
        """Issue 15's numbers: a streamed answer of text deltas with the response leg on and off
        (time to first byte, total time), and the added latency of one judged tool call in a
        stream, with the cache off (the leg asks Cerbos) and on. One connection; off then on,
        each right after the other."""
        self.sse_sanity()
        text = f"text:{SSE_DELTAS}"
        runs = [
            ("text_paced", f"{SSE_DELTAS} text deltas, one every {SSE_INTERVAL_US} µs", text, SSE_INTERVAL_US,
             SSE_TEXT_EXPECT, "", "agent_authz_cached"),
            ("text_burst", f"{SSE_DELTAS} text deltas, back to back", text, 0, SSE_TEXT_EXPECT, "", "agent_authz_cached"),
            ("tool_cached", f"one tool call ({SSE_TOOL}, arguments in 7-byte fragments), cache on", "tool", 0,
             SSE_TOOL_EXPECT, "", "agent_authz_cached"),
            ("tool_uncached", f"one tool call ({SSE_TOOL}, arguments in 7-byte fragments), cache off", "tool", 0,
             SSE_TOOL_EXPECT, "_uncached", "agent_authz"),
        ]
        for key, title, answer, interval, expect, suffix, proc in runs:
            out = {"title": title, "answer": answer, "interval_us": interval, "instance": proc}
            # A paced answer takes SSE_DELTAS x interval (200 ms by default): DURATION alone
            # measured 25 answers, whose TTFB p50 moved by ~8 % between runs of the same build.
            seconds = DURATION * (PACED_DURATION_FACTOR if interval else 1)
            for leg in ("off", "on"):
                listener = f"sse_{leg}{suffix}"
                self.sse_load(listener, answer, interval, expect, 100000, WARMUP)
                r = self.measure(lambda: self.sse_load(listener, answer, interval, expect, 100000, seconds))
                r["ok"] = r["errors"] == 0
                out[leg] = r
                log(f"sse {key:<14} leg {leg:<3} {r['requests']:6d} answers  ttfb p50 {r['ttfb_p50_ms']:.3f} ms  "
                    f"total p50 {r['p50_ms']:.3f} ms  {proc} cpu/answer "
                    f"{r['cpu_s'][proc] / r['requests'] * 1e6 if r['requests'] else float('nan'):.0f} µs  "
                    f"{'ok' if r['ok'] else 'ERRORS ' + str(r['errors']) + ': ' + str(r.get('first_error'))}")
            self.results["sse"][key] = out

    def run_memory(self) -> None:
        """The issue's memory targets: agent-authz's resident set idle (restarted, ready, one
        small check judged, then left alone for a second) and its peak with 64 concurrent 1 MiB bodies
        (grpc_load, 64 callers over 2 connections, cache on)."""
        self.fresh("agent_authz_cached")
        small = self.direct_spec("memory_1k", "chat_1k")
        self.grpc_load("ext-authz", self.ports["authz_cached"], small, 1, 1, 10)
        time.sleep(1)
        pid = self.procs.pid("agent_authz_cached")
        idle_kib = vm_kib(pid, "VmRSS")
        spec = self.direct_spec("memory_1m", "chat_1m_20tools")
        r = self.measure(lambda: self.grpc_load("ext-authz", self.ports["authz_cached"], spec, 64, 2000,
                                                DURATION + 10, connections=2),
                         cache_admin=self.ports["authz_cached_admin"])
        r["ok"] = r["errors"] == 0 and set(r["outcomes"]) == {"grpc_0"}
        self.results["memory"] = {"idle_rss_kib": idle_kib, "concurrency": 64, "body": "chat_1m_20tools",
                                  "peak_rss_kib": r["hwm_kib"]["agent_authz_cached"], "run": r}
        log(f"memory: idle RSS {idle_kib / 1024:.1f} MiB; 64 concurrent 1 MiB bodies: peak "
            f"{r['hwm_kib']['agent_authz_cached'] / 1024:.1f} MiB {r['outcomes']}")

    # ------------------------------------------------------------------ the LiteLLM peer
    def start_litellm(self) -> None:
        """One LiteLLM proxy process (its default: 1 uvicorn worker), offline, on the upstream.
        Under strace when it is installed: only connect() stops the process (seccomp-bpf), so
        every connection it attempts is on record at next to no cost."""
        argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(self.run_dir / "litellm.yaml"),
                "--host", "127.0.0.1", "--port", str(self.ports["listener_litellm"]), "--num_workers", "1"]
        self.litellm_trace = self.run_dir / "litellm.connect.log"
        if strace_works():
            argv = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", str(self.litellm_trace)] + argv
        started = time.monotonic()
        self.procs.spawn("litellm", argv, env=LITELLM_OFFLINE_ENV)
        self.procs.wait_ready("litellm", lambda: http_get(
            f"http://127.0.0.1:{self.ports['listener_litellm']}/health/readiness")[0] == 200, timeout=180)
        self.results["litellm"]["startup_s"] = time.monotonic() - started
        self.tracked.append("litellm")
        log(f"LiteLLM {LITELLM_VERSION} ready in {self.results['litellm']['startup_s']:.1f} s")

    def litellm_sanity(self) -> dict:
        """Before any load: both bodies answer 200 and the 16 KiB one went through the guardrail
        (LiteLLM names the guardrails it applied in a response header); one undeclared tool makes
        the request fail (400), so the guardrail does enforce, on every request (default_on)."""
        url = self.url("litellm", "/v1/chat/completions")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.litellm_key}"}
        out: dict[str, dict] = {}
        for name, body, expect in (("chat_16k_20tools", "chat_16k_20tools", 200), ("chat_1k_0tools", "chat_1k", 200),
                                   ("chat_16k_denied_tool", "chat_16k_denied_tool", 400)):
            status, answer_headers, answer = http_post_headers(url, self.files[body].read_bytes(), headers)
            applied = answer_headers.get("x-litellm-applied-guardrails", "")
            out[name] = {"status": status, "applied_guardrails": applied, "answer": answer[:400].decode(errors="replace")}
            if status != expect:
                raise BenchError(f"LiteLLM sanity: {name} answered {status}, expected {expect}: {answer[:400]!r}\n"
                                 + self.procs.tail("litellm"))
        if self.litellm_guardrail not in out["chat_16k_20tools"]["applied_guardrails"].split(","):
            raise BenchError(f"LiteLLM sanity: the 16 KiB request did not go through {self.litellm_guardrail} "
                             f"(x-litellm-applied-guardrails: {out['chat_16k_20tools']['applied_guardrails']!r})")
        if "delete_all_tickets" not in out["chat_16k_denied_tool"]["answer"]:
            raise BenchError(f"LiteLLM sanity: the 400 is not the guardrail's: {out['chat_16k_denied_tool']['answer']!r}")
        log("LiteLLM sanity: 200 through tool_permission; an undeclared tool is refused (400)")
        return out

    def run_litellm(self) -> None:
        """The peer, last (so that its memory and its idle work are not in anyone else's run):
        wrk straight to LiteLLM, same bodies, durations and concurrency as through Envoy."""
        self.start_litellm()
        ll = self.results["litellm"]
        ll.update({"ran": True, "version": LITELLM_VERSION, "workers": 1, "config": "bench/litellm.yaml",
                   "guardrail": self.litellm_guardrail, "sanity": self.litellm_sanity(), "runs": {}})
        chat = "/v1/chat/completions"
        ll["scenarios"] = [
            {"id": "litellm_16k_20tools", "title": "chat 16 KiB, 20 tools", "body": "chat_16k_20tools",
             "compare": "repeat_cache", "target": True},
            {"id": "litellm_1k_0tools", "title": "chat 1 KiB, 0 tools (nothing for the guardrail to check)",
             "body": "chat_1k", "compare": "chat_1k_0tools", "target": False},
        ]
        seen_peers: dict[str, int] = {}
        for spec in ll["scenarios"]:
            s = {"id": spec["id"], "listener": "litellm", "body": spec["body"], "path": chat, "headers": {},
                 "tokens": "litellm_key", "expect": 200}
            for c in CONCURRENCY:
                self.wrk(s, c, 2 * WARMUP)  # Python warms up slowly: the longer, cached-scenario warm-up
                r = self.measure(lambda: self.wrk(s, c, DURATION))
                errors = r["errors"]
                r["ok"] = sum(errors.values()) == 0
                ll["runs"].setdefault(spec["id"], {})[str(c)] = r
                for peer in socket_peers(self.tree_pids("litellm"), self.ports["listener_litellm"]):
                    seen_peers[peer] = seen_peers.get(peer, 0) + 1
                cpu = r["cpu_s"]["litellm"]
                log(f"{spec['id']:<20} c={c:<3} {r['throughput_rps']:8.1f} req/s  p50 {r['p50_ms']:.3f} ms  "
                    f"p99 {r['p99_ms']:.3f} ms  {r['requests'] / cpu if cpu else float('nan'):.0f} req per cpu-second  "
                    f"{'ok' if r['ok'] else 'UNEXPECTED ANSWERS ' + json.dumps(errors)}")
        ll["outbound"] = self.litellm_outbound(seen_peers)

    def litellm_outbound(self, seen_peers: dict[str, int]) -> dict:
        """Where LiteLLM tried to connect: the strace record of every connect() since it started,
        the TCP peers `ss` saw after each run, and network errors in its log."""
        upstream = f"127.0.0.1:{self.ports['upstream']}"
        out: dict[str, Any] = {"upstream": upstream, "ss_peers": seen_peers}
        if self.litellm_trace.exists():
            out["connects"] = connect_destinations(self.litellm_trace.read_text(errors="replace"))
        log_text = "\n".join((self.run_dir / f"litellm{suffix}").read_text(errors="replace")
                             for suffix in (".log", ".stdout.log") if (self.run_dir / f"litellm{suffix}").exists())
        out["log_network_errors"] = [line[:200] for line in log_text.splitlines() if re.search(
            r"ConnectError|ConnectTimeout|Name or service not known|Temporary failure in name resolution|"
            r"getaddrinfo|Network is unreachable|api\.litellm\.ai|githubusercontent", line)][:20]
        local = {upstream, "AF_UNIX", "AF_UNSPEC"}
        others = [d for d in list(out.get("connects", {})) + list(seen_peers) if d not in local]
        out["only_upstream"] = not others and not out["log_network_errors"]
        out["others"] = sorted(set(others))
        log(f"LiteLLM outbound: connect() destinations {out.get('connects', 'not traced (no strace)')}, "
            f"ss peers {seen_peers}; {'nothing but the upstream' if out['only_upstream'] else 'ALSO ' + str(out['others'])}")
        return out

    def tree_pids(self, name: str) -> list[int]:
        """The processes counted as `name`: its process and every descendant, less the strace
        that may be tracing it (its root, then)."""
        return [p for p in process_tree(self.procs.pid(name)) if process_name(p) != "strace"]

    # ------------------------------------------------------------------ report
    def machine(self) -> dict:
        def first_line(argv: list[str]) -> str:
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                                     env={**os.environ, "CERBOS_NO_TELEMETRY": "1"})
                return (out.stdout or out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "unknown"

        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")), "unknown")
        mhz = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("cpu MHz")), "?")
        meminfo = Path("/proc/meminfo").read_text()
        mem_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
        envoy = first_line([str(TOOLS_BIN / "envoy"), "--version"])
        envoy = envoy.split("version:")[-1].strip() if "version:" in envoy else envoy
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        # What the measured binaries are built from (edits to the bench's own scripts do not count).
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "src", "examples", "Cargo.toml", "Cargo.lock"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return {
            "nproc": os.cpu_count(),
            "cpu_model": model,
            "cpu_mhz": mhz,
            "hypervisor": " hypervisor " in f" {cpuinfo} ".replace("\n", " "),
            "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": f"{platform.system()} {platform.release()}",
            "envoy": envoy,
            "cerbos": first_line([str(TOOLS_BIN / "cerbos"), "--version"]),
            "agent_authz": first_line([str(AGENT_AUTHZ), "--version"]) + f" (git {git}{', uncommitted changes to the code' if dirty else ''})",
            # The build the measured binaries came from (Cargo.toml's [profile.release]).
            # "pgo": scripts/build-pgo.sh's profile-guided build; "release": plain cargo build --release.
            "build": BUILD or "unknown",
            "release_profile": tomllib.loads((REPO / "Cargo.toml").read_text()).get("profile", {}).get("release", {}),
            "rustc": first_line(["rustc", "--version"]),
            "wrk": first_line(["wrk", "-v"]).split(" [")[0],
            "python": platform.python_version(),
        }

    def run(self) -> None:
        started = time.monotonic()
        self.results["quiet_share_at_start"] = wait_for_quiet(QUIET_WAIT)
        self.write_files()
        self.start()
        for _ in range(5):
            self.probe()
        scenarios = self.scenarios()
        self.sanity(scenarios)
        self.run_http(scenarios)
        self.run_cerbos()
        if ONLY != "litellm":
            self.run_direct()
            self.run_direct_uncached()
            self.run_sse()
        if ONLY == "":
            self.run_memory()
        if WITH_LITELLM:
            self.run_litellm()
        self.results["machine"] = self.machine()
        self.results["fastest_probe_ms"] = self.fastest_probe
        self.results["retry_seconds"] = self.retry_spent
        self.results["settings"] = {"duration_s": DURATION, "warmup_s": WARMUP, "concurrency": CONCURRENCY,
                                    "distinct_tokens": N_TOKENS, "only": ONLY or None,
                                    "pinned": {"servers_cpu": PIN_SERVERS, "load_cpu": PIN_LOAD} if PIN else None,
                                    "envoy_workers": ENVOY_WORKERS,
                                    "sse": {"deltas": SSE_DELTAS, "interval_us": SSE_INTERVAL_US},
                                    "authz_worker_threads": yaml.safe_load((BENCH / "agent-authz.yaml").read_text())
                                    ["server"].get("worker_threads"),
                                    "bodies": {k: v.stat().st_size for k, v in self.files.items() if k != "tokens"}}
        self.results["bench_seconds"] = time.monotonic() - started
        self.results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.results["scenarios"] = scenarios
        OUT.mkdir(parents=True, exist_ok=True)
        from report import previous_summaries, render  # bench/report.py

        # "No check slower than today": the run this one replaces, summarised to compare with.
        if (OUT / "results.json").exists():
            try:
                self.results["previous"] = previous_summaries(json.loads((OUT / "results.json").read_text()))
            except (ValueError, KeyError, TypeError) as e:
                log(f"the previous {OUT / 'results.json'} is not comparable ({e!r}): no comparison")
        (OUT / "results.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")

        (OUT / "RESULTS.md").write_text(render(self.results))
        log(f"wrote {OUT / 'RESULTS.md'} and {OUT / 'results.json'} ({self.results['bench_seconds']:.0f} s)")


def _interrupted(*_: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    missing = [str(p) for p in (AGENT_AUTHZ, EXAMPLES / "grpc_load", EXAMPLES / "allow_all", EXAMPLES / "bench_upstream",
                                EXAMPLES / "sse_load", EXAMPLES / "ask_cerbos",
                                TOOLS_BIN / "envoy", TOOLS_BIN / "cerbos") if not p.exists()]
    if shutil.which("wrk") is None:
        missing.append("wrk")
    if missing:
        print("bench: missing " + ", ".join(missing) + " (run bench/run.sh)", file=sys.stderr)
        return 2
    if ONLY not in ONLY_CHOICES:
        print(f"bench: BENCH_ONLY={ONLY!r}: the subsets are 'litellm' and 'targets'", file=sys.stderr)
        return 2
    if PIN:
        cpus = os.sched_getaffinity(0)
        if shutil.which("taskset") is None:
            print("bench: BENCH_PIN=1 needs taskset (util-linux; bench/run.sh installs it)", file=sys.stderr)
            return 2
        if not {int(PIN_SERVERS), int(PIN_LOAD)} <= cpus or PIN_SERVERS == PIN_LOAD:
            print(f"bench: BENCH_PIN=1 needs two distinct CPUs (servers {PIN_SERVERS}, load {PIN_LOAD}); "
                  f"this process may use {sorted(cpus)}", file=sys.stderr)
            return 2
        # This script (and so every child it does not pin itself) stays off the servers' CPU.
        os.sched_setaffinity(0, {int(PIN_LOAD)})
    if WITH_LITELLM:
        try:
            ensure_litellm()
        except (BenchError, subprocess.SubprocessError, OSError) as e:
            print(f"bench: LiteLLM peer: {e}", file=sys.stderr)
            return 2
        global RUN_DEADLINE
        RUN_DEADLINE = time.monotonic() + MAX_SECONDS
    signal.signal(signal.SIGTERM, _interrupted)
    bench = Bench()
    failed = True
    try:
        bench.run()
        failed = False
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
    finally:
        bench.procs.stop()
        if failed or KEEP_DIR:
            print(f"bench: logs kept in {bench.run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(bench.run_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    sys.exit(main())
