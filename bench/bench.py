#!/usr/bin/env python3
"""The cost of enforcement, against its baselines, in one run. Called by bench/run.sh (which
builds everything first); writes bench/RESULTS.md and bench/results.json.

Starts, on free 127.0.0.1 ports, from a fresh temporary directory:
  - Cerbos (.tools/bin/cerbos) with the bench-only policies in bench/policies/,
  - the fast upstream (examples/bench_upstream.rs),
  - the allow-all ext_authz server (examples/allow_all.rs), baseline (b),
  - agent-authz twice: bench/agent-authz.yaml (cache off) and bench/agent-authz-cached.yaml,
  - one Envoy (.tools/bin/envoy) with bench/envoy.yaml: four listeners (direct, allow-all,
    agent-authz, agent-authz cached) in front of the same upstream.
Then drives load from separate processes, each bounded in time or count:
  - wrk (bench/wrk_fixed.lua, bench/wrk_rotate.lua) through Envoy, at each concurrency level,
  - examples/grpc_load.rs against Cerbos alone (baseline (c), the same CheckResources
    agent-authz sent, taken from its decision log) and against agent-authz alone (no Envoy).
Around every measured run it reads /proc/<pid>/stat (utime+stime) of every server process and
their VmHWM (reset through /proc/<pid>/clear_refs before the run, so it is the run's own peak).

Knobs (environment): BENCH_DURATION (s per measured wrk run, default 5), BENCH_WARMUP (s,
default 1), BENCH_CONCURRENCY (default "1,16"), BENCH_TOKENS (distinct principals, default
1000), BENCH_KEEP_DIR=1 (keep the run directory with every log), BENCH_OUT (default bench/),
BENCH_QUIET_WAIT (s to wait for other work on the machine to settle first, default 120),
BENCH_MAX_SECONDS (bound on the whole run, default 1200).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import jwt as pyjwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RELEASE = REPO / "target" / "release"
EXAMPLES = RELEASE / "examples"
TOOLS_BIN = REPO / ".tools" / "bin"
AGENT_AUTHZ = RELEASE / "agent-authz"

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
# The whole run is bounded: every child has a timeout, and this guards the sum.
RUN_DEADLINE = time.monotonic() + float(os.environ.get("BENCH_MAX_SECONDS", "1200"))

# The port numbers written in bench/envoy.yaml, and what each one is.
ENVOY_TEMPLATE_PORTS = {
    9901: "envoy_admin",
    10001: "listener_direct",
    10002: "listener_allow_all",
    10003: "listener_authz",
    10004: "listener_authz_cached",
    8081: "upstream",
    9291: "allow_all",
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


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- keys and tokens
def b64url_uint(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


class Issuer:
    """An RS256 identity provider: one key, its JWKS, and tokens minted on demand."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
                          "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}]}

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


def mcp_call_body() -> bytes:
    return dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                  "params": {"name": "refund", "arguments": {"ticket_id": "T-100", "amount_cents": 2500,
                                                              "reason": "duplicate charge"}}})


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _child_setup() -> None:
    """In the child before exec: its own process group, and SIGTERM if bench.py dies."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


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
            self.popen[name] = subprocess.Popen(argv, cwd=REPO, env=full_env, stdin=subprocess.DEVNULL,
                                                stdout=out, stderr=err, preexec_fn=_child_setup)

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


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
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
        self.results: dict[str, Any] = {"http": {}, "cerbos": {}, "direct": {}}
        self.tracked = ["agent_authz", "agent_authz_cached", "cerbos", "envoy", "upstream", "allow_all"]

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
        p.spawn("envoy", [str(TOOLS_BIN / "envoy"), "-c", str(d / "envoy.yaml"), "--concurrency", "2",
                          "--disable-hot-restart", "--base-id", str(random.randrange(1000, 60000)),
                          "--log-level", "warn"])
        p.wait_ready("envoy", lambda: http_get(f"http://127.0.0.1:{self.ports['envoy_admin']}/ready")[0] == 200)
        log(f"stack up in {d}")

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
        return out

    def sanity(self, scenarios: list[dict]) -> None:
        """One request per scenario before any load: the expected status, and the question
        agent-authz asked Cerbos (from its decision log) for baseline (c)."""
        for s in scenarios:
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
        """Runs `run` (a load generator in its own process) with CPU and peak-RSS readings of
        every server process around it."""
        if time.monotonic() > RUN_DEADLINE:
            raise BenchError("BENCH_MAX_SECONDS exceeded")
        self.procs.check_alive()
        pids = {n: self.procs.pid(n) for n in self.tracked}
        for pid in pids.values():
            reset_peak_rss(pid)
        cache_before = (metric(cache_admin, "agent_authz_cache_hits_total"),
                        metric(cache_admin, "agent_authz_cache_misses_total")) if cache_admin else None
        before = {n: cpu_seconds(pid) for n, pid in pids.items()}
        task0, irq0, steal0 = machine_cpu()
        loadgen0 = children_cpu()
        started = time.monotonic()
        result = run()
        result["wall_s"] = time.monotonic() - started
        task1, irq1, steal1 = machine_cpu()
        result["cpu_s"] = {n: cpu_seconds(pid) - before[n] for n, pid in pids.items()}
        # Who else used the CPUs: the load generator, and anything not started by this run.
        result["loadgen_cpu_s"] = children_cpu() - loadgen0
        result["machine_task_s"] = task1 - task0
        result["machine_irq_s"] = irq1 - irq0
        result["steal_s"] = steal1 - steal0
        result["other_cpu_s"] = max(0.0, result["machine_task_s"] - result["loadgen_cpu_s"] - sum(result["cpu_s"].values()))
        result["hwm_kib"] = {n: vm_kib(pid, "VmHWM") for n, pid in pids.items()}
        result["rss_kib"] = {n: vm_kib(pid, "VmRSS") for n, pid in pids.items()}
        if cache_before:
            hits = metric(cache_admin, "agent_authz_cache_hits_total") - cache_before[0]
            misses = metric(cache_admin, "agent_authz_cache_misses_total") - cache_before[1]
            result["cache_hit_ratio"] = hits / (hits + misses) if hits + misses else float("nan")
        self.procs.check_alive()
        return result

    def wrk(self, s: dict, concurrency: int, seconds: int) -> dict:
        env = {"BENCH_LUA_DIR": str(BENCH), "BENCH_PATH": s["path"], "BENCH_BODY": str(self.files[s["body"]]),
               "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in s["headers"].items())}
        script = "wrk_fixed.lua"
        if s["tokens"] == "fixed":
            env["BENCH_TOKEN"] = self.tokens["alice"]
        elif s["tokens"] == "rotate":
            env["BENCH_TOKENS"] = str(self.files["tokens"])
            script = "wrk_rotate.lua"
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "5s",
                "-s", str(BENCH / script), self.url(s["listener"], s["path"])]
        done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=seconds + 60)
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
                  max_seconds: float, connections: int = 1) -> dict:
        argv = [str(EXAMPLES / "grpc_load"), "--target", target, "--addr", f"http://127.0.0.1:{addr_port}",
                "--spec", str(spec), "--concurrency", str(concurrency), "--requests", str(requests),
                "--max-seconds", str(max_seconds), "--connections", str(connections), "--threads", "1"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=max_seconds * 2 + 60)
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
                hard = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
                if s["expect"] == 200:
                    r["ok"] = hard == 0 and errors["status"] == 0
                else:
                    r["ok"] = hard == 0 and errors["status"] == r["requests"]
                self.results["http"].setdefault(s["id"], {})[str(c)] = r
                log(f"{s['id']:<20} c={c:<3} {r['throughput_rps']:8.0f} req/s  p50 {r['p50_ms']:.3f} ms  "
                    f"p99 {r['p99_ms']:.3f} ms  {'ok' if r['ok'] else 'UNEXPECTED ANSWERS ' + json.dumps(errors)}")

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

    def run_direct(self) -> None:
        """agent-authz alone: CheckRequests straight from grpc_load, no Envoy. Two connections,
        like Envoy's two workers; cache on and hot, plus the same without the cache."""
        c = max(CONCURRENCY)
        runs = [("hot_cache_16k_20tools", "authz_cached", "chat_16k_20tools", "/v1/chat/completions", {}),
                ("hot_cache_1k_0tools", "authz_cached", "chat_1k", "/v1/chat/completions", {}),
                ("no_cache_16k_20tools", "authz", "chat_16k_20tools", "/v1/chat/completions", {})]
        for name, instance, body, path, headers in runs:
            spec = self.run_dir / f"direct_{name}.json"
            spec.write_text(json.dumps({"method": "POST", "path": path, "host": "127.0.0.1",
                                        "headers": {"content-type": "application/json",
                                                    "authorization": f"Bearer {self.tokens['alice']}", **headers},
                                        "body_file": str(self.files[body])}))
            self.fresh("agent_authz_cached" if instance == "authz_cached" else "agent_authz")
            self.grpc_load("ext-authz", self.ports[instance], spec, c, 2000, 3, connections=2)
            admin = self.ports["authz_cached_admin"] if instance == "authz_cached" else None
            r = self.measure(lambda: self.grpc_load("ext-authz", self.ports[instance], spec, c, 200000,
                                                    DURATION + 3, connections=2), cache_admin=admin)
            r["instance"] = "agent_authz_cached" if instance == "authz_cached" else "agent_authz"
            r["concurrency"] = c
            r["ok"] = r["errors"] == 0 and set(r["outcomes"]) == {"grpc_0"}
            self.results["direct"][name] = r
            cpu = r["cpu_s"][r["instance"]]
            log(f"direct {name:<22} {r['throughput_rps']:8.0f} checks/s  agent-authz cpu {cpu:.2f} s  "
                f"=> {r['requests'] / cpu if cpu else float('nan'):.0f} checks per cpu-second  {r['outcomes']}")

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
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
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
            "agent_authz": first_line([str(AGENT_AUTHZ), "--version"]) + f" (git {git}{', uncommitted changes' if dirty else ''})",
            "rustc": first_line(["rustc", "--version"]),
            "wrk": first_line(["wrk", "-v"]).split(" [")[0],
            "python": platform.python_version(),
        }

    def run(self) -> None:
        started = time.monotonic()
        self.results["quiet_share_at_start"] = wait_for_quiet(QUIET_WAIT)
        self.write_files()
        self.start()
        scenarios = self.scenarios()
        self.sanity(scenarios)
        self.run_http(scenarios)
        self.run_cerbos()
        self.run_direct()
        self.results["machine"] = self.machine()
        self.results["settings"] = {"duration_s": DURATION, "warmup_s": WARMUP, "concurrency": CONCURRENCY,
                                    "distinct_tokens": N_TOKENS,
                                    "bodies": {k: v.stat().st_size for k, v in self.files.items() if k != "tokens"}}
        self.results["bench_seconds"] = time.monotonic() - started
        self.results["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.results["scenarios"] = scenarios
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        from report import render  # bench/report.py

        (OUT / "RESULTS.md").write_text(render(self.results))
        log(f"wrote {OUT / 'RESULTS.md'} and {OUT / 'results.json'} ({self.results['bench_seconds']:.0f} s)")


def _interrupted(*_: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    missing = [str(p) for p in (AGENT_AUTHZ, EXAMPLES / "grpc_load", EXAMPLES / "allow_all", EXAMPLES / "bench_upstream",
                                TOOLS_BIN / "envoy", TOOLS_BIN / "cerbos") if not p.exists()]
    if shutil.which("wrk") is None:
        missing.append("wrk")
    if missing:
        print("bench: missing " + ", ".join(missing) + " (run bench/run.sh)", file=sys.stderr)
        return 2
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
