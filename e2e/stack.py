"""The whole agent-authz stack on loopback, for the end-to-end tests and the demo.

    with Stack() as stack:
        token = stack.mint_token("alice", ["support"], allowed_models=["gpt-4o-mini"])
        ...  # talk to stack.envoy_url

Starts, on free 127.0.0.1 ports and from a fresh temporary directory:
  - Cerbos (.tools/bin/cerbos) serving policies/,
  - the sample upstreams (e2e/upstreams/llm_upstream.py and mcp_server.py),
  - agent-authz (AGENT_AUTHZ_BIN, default target/debug/agent-authz),
  - Envoy (.tools/bin/envoy) with a rendered copy of envoy/agent-gateway*.yaml.
The RSA signing key is generated at run time; nothing secret is ever written to the repository.
Every process logs to a file in the temporary directory (see Stack.log_path / Stack.log_tail).
"""

from __future__ import annotations

import atexit
import base64
import copy
import itertools
import json
import os
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
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jwt as pyjwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO / ".tools" / "bin"
VENV_PYTHON = REPO / ".tools" / "venv" / "bin" / "python"

ISSUER = "https://issuer.agent-authz.test"
AUDIENCE = "agent-gateway"
KID = "test-key-1"
MCP_SERVER_NAME = "support"

READY_TIMEOUT = 30.0

# The port numbers written in envoy/*.yaml, and what each one is.
ENVOY_TEMPLATE_PORTS = {10000: "listener", 9901: "admin", 9191: "authz", 9192: "authz_admin", 8081: "llm", 8082: "mcp"}
ENVOY_TEMPLATE_JWKS = "/etc/agent-authz/jwks.json"


# The demo principals: JWT claims beyond iss/aud/sub/exp. They match policies/tests/testdata.
PRINCIPALS: dict[str, dict[str, Any]] = {
    "alice": {"roles": ["support"], "assigned_ticket": "T-100", "refund_limit_cents": 100000,
              "allowed_models": ["gpt-4o-mini"]},
    "bob": {"roles": ["support"], "assigned_ticket": "T-200", "refund_limit_cents": 5000,
            "allowed_models": ["gpt-4o-mini", "gpt-4o"]},
    "mallory": {"roles": ["guest"]},
    "root": {"roles": ["admin"]},
}


class StackError(RuntimeError):
    """A component is missing or did not become ready."""


def agent_authz_binary() -> Path:
    path = Path(os.environ.get("AGENT_AUTHZ_BIN", REPO / "target" / "debug" / "agent-authz"))
    return path if path.is_absolute() else (REPO / path)


def missing_binaries() -> list[str]:
    """The binaries the stack needs that are not there, with a hint each."""
    missing = []
    for name in ("cerbos", "envoy"):
        if not (TOOLS_BIN / name).exists():
            missing.append(f"{TOOLS_BIN / name} (run scripts/setup.sh)")
    if not agent_authz_binary().exists():
        missing.append(f"{agent_authz_binary()} (run cargo build, or set AGENT_AUTHZ_BIN)")
    return missing


def die_with_parent() -> None:
    """In the child before exec: its own process group, and SIGTERM if the parent (the test
    runner, the demo, the benchmark) dies."""
    os.setsid()
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports free_port has handed out in this process: free when it checked them, but perhaps not
# bound yet by the server they were meant for.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range, never one this process was
    handed before. A port the kernel hands out for `bind(0)` is one any outgoing connection may
    take next, before the server meant to listen on it binds it (seen: Envoy refusing to start
    with "Address already in use" while the bench's load generators opened connections); and a
    port checked free is still free when asked again until its server binds it, so two servers
    of one stack could be given the same one (seen once in CI: a stack's Envoy listener found
    its port taken)."""
    start = _ephemeral_start()
    for _ in range(100):
        port = random.randint(max(1024, start - 12000), start - 1)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_for(key: rsa.RSAPrivateKey, kid: str = KID) -> dict:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}


def default_authz_config() -> dict:
    """The agent-authz configuration the stack writes (ports and paths filled in at start)."""
    return {
        "server": {"grpc_address": "127.0.0.1:9191", "max_request_bytes": 1048576},
        "identity": {
            "source": "jwt",
            "jwt": {
                "jwks": {"file": ENVOY_TEMPLATE_JWKS},
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "algorithms": ["RS256"],
            },
            "principal": {"id_claim": "sub", "roles_claim": "roles"},
        },
        "cerbos": {"address": "http://127.0.0.1:3593", "timeout": "500ms"},
        # The fallback table: the shipped envoy/ configs name each route's format in
        # context_extensions, which take precedence.
        "routes": [
            {"path_prefix": "/v1/chat/completions", "format": "openai_chat"},
            {"path_prefix": "/v1/responses", "format": "openai_responses"},
            {"path_prefix": "/v1/messages", "format": "anthropic_messages"},
            {"path_prefix": "/v1/models", "format": "openai_models"},
            {"path_prefix": "/v1beta/models", "format": "gemini"},
            {"path_prefix": "/model", "format": "bedrock_converse"},
            {"path_prefix": "/mcp", "format": "mcp", "mcp_server": MCP_SERVER_NAME},
        ],
        "unclassified_routes": "deny",
        # Azure deployments and the models they serve (the e2e tests' deployments).
        "azure_openai": {"deployments": {"prod-gpt": "gpt-4o-mini", "big-gpt": "gpt-4o"}},
        # Envoy runs the ext_proc leg: denied tools are stripped, tools/list answers filtered.
        "denied_tools": "strip",
    }


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in; a value of None removes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render_envoy_config(template: str, ports: dict[str, int], jwks_path: str | None = None) -> str:
    """Substitutes the `port_value: N` lines (and the JWKS path) of an envoy/*.yaml file."""

    def port(match: re.Match) -> str:
        n = int(match.group(1))
        if n not in ENVOY_TEMPLATE_PORTS:
            raise StackError(f"envoy config has an unexpected port_value {n}")
        return f"port_value: {ports[ENVOY_TEMPLATE_PORTS[n]]}"

    rendered = re.sub(r"port_value:\s*(\d+)", port, template)
    if jwks_path is not None:
        rendered = rendered.replace(ENVOY_TEMPLATE_JWKS, jwks_path)
    return rendered


def render_cerbos_config(template: str, *, grpc_port: int, http_port: int, policies: Path, watch: bool = True) -> str:
    config = yaml.safe_load(template)
    config["server"]["grpcListenAddr"] = f"127.0.0.1:{grpc_port}"
    config["server"]["httpListenAddr"] = f"127.0.0.1:{http_port}"
    config["storage"]["disk"]["directory"] = str(policies)
    config["storage"]["disk"]["watchForChanges"] = watch
    config.setdefault("telemetry", {})["disabled"] = True
    return yaml.safe_dump(config, sort_keys=False)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    stdout_log: Path | None = None  # separate stdout (agent-authz: the decision log)
    popen: subprocess.Popen | None = field(default=None, repr=False)


_live_stacks: "weakref.WeakSet[Stack]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for stack in list(_live_stacks):
        stack.stop()


class Stack:
    """Cerbos + two upstreams + agent-authz + Envoy on free loopback ports."""

    _base_ids = itertools.count(random.randrange(1000, 60000))

    def __init__(
        self,
        *,
        envoy_config: str = "agent-gateway.yaml",
        identity_source: str = "jwt",
        authz_overrides: dict | None = None,
        mcp_args: tuple[str, ...] = (),
        upstream_script: str | None = None,
        envoy_args: tuple[str, ...] = (),
        mcp_script: str = "e2e/upstreams/mcp_server.py",
        name: str = "stack",
        copy_policies: bool = False,
        keep_dir: bool | None = None,
        cerbos_tls: tuple[Path, Path] | None = None,
        authz_env: dict[str, str] | None = None,
    ) -> None:
        missing = missing_binaries()
        if missing:
            raise StackError("missing: " + "; ".join(missing))
        self.name = name
        self.envoy_template = REPO / "envoy" / envoy_config
        self.identity_source = identity_source
        self.authz_overrides = authz_overrides or {}
        self.mcp_args = tuple(mcp_args)
        # One script (under e2e/upstreams/) serving both upstream ports instead of the sample LLM
        # upstream and MCP server, e.g. slow_stream.py; it must answer GET /_received.
        self.upstream_script = upstream_script
        self.envoy_args = tuple(envoy_args)
        # The MCP server behind the gateway (e2e/upstreams/mcp_raw.py: the hand-written one
        # that answers in any wire shape and records what it parsed).
        self.mcp_script = mcp_script
        # A private copy of policies/ that a run may edit (Cerbos watches it for changes).
        self.copy_policies = copy_policies
        # Cerbos serving TLS on both listeners with this (certificate, key); agent-authz then
        # reaches it at https://127.0.0.1 (trusting whatever authz_env's SSL_CERT_FILE names).
        self.cerbos_tls = cerbos_tls
        self.authz_env = authz_env or {}
        self.keep_dir = bool(os.environ.get("E2E_KEEP_DIR")) if keep_dir is None else keep_dir
        self.dir = Path(tempfile.mkdtemp(prefix=f"agent-authz-{name}-"))
        self.ports = {k: free_port() for k in ("listener", "admin", "authz", "authz_admin", "llm", "mcp", "cerbos_grpc", "cerbos_http")}
        self.key = new_rsa_key()
        self.jwks_path = self.dir / "jwks.json"
        self.executions_log = self.dir / "mcp-executions.jsonl"
        self.procs: dict[str, _Proc] = {}
        self.authz_config: dict = {}
        self._stopped = False

    # ------------------------------------------------------------------ URLs
    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['listener']}"

    @property
    def llm_base_url(self) -> str:
        """The OpenAI base URL through the gateway."""
        return f"{self.envoy_url}/v1"

    @property
    def mcp_url(self) -> str:
        """The MCP endpoint through the gateway."""
        return f"{self.envoy_url}/mcp"

    @property
    def envoy_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    @property
    def llm_direct_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['llm']}"

    @property
    def mcp_direct_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['mcp']}/mcp"

    @property
    def cerbos_http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['cerbos_http']}"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "Stack":
        _live_stacks.add(self)
        self._write_files()
        python = str(VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable))

        self._spawn(
            "cerbos",
            [str(TOOLS_BIN / "cerbos"), "server", f"--config={self.dir / 'cerbos.yaml'}"],
            env={"CERBOS_NO_TELEMETRY": "1"},
        )
        llm_script = self.upstream_script or "llm_upstream.py"
        self._spawn(
            "llm_upstream",
            [python, "-u", str(REPO / "e2e/upstreams" / llm_script), "--port", str(self.ports["llm"])],
        )
        mcp_argv = [str(REPO / self.mcp_script), "--port", str(self.ports["mcp"]), *self.mcp_args]
        if self.upstream_script:
            mcp_argv = [str(REPO / "e2e/upstreams" / self.upstream_script), "--port", str(self.ports["mcp"])]
        self._spawn("mcp_server", [python, "-u", *mcp_argv], env={"MCP_EXECUTIONS_LOG": str(self.executions_log)})
        self._wait("cerbos", self._cerbos_ready)
        self._wait("llm_upstream", lambda: http_get(f"{self.llm_direct_url}/_received")[0] == 200)
        self._wait("mcp_server", lambda: tcp_open(self.ports["mcp"]))

        self._spawn(
            "agent_authz",
            [str(agent_authz_binary()), "serve", "--config", str(self.dir / "agent-authz.yaml")],
            env={"RUST_LOG": os.environ.get("RUST_LOG", "info"), **self.authz_env},
            separate_stdout=True,
        )
        self._wait("agent_authz", lambda: tcp_open(self.ports["authz"]))

        self._spawn_envoy("envoy", self.dir / "envoy.yaml", self.ports["admin"])
        return self

    def _spawn_envoy(self, name: str, config: Path, admin_port: int, env: dict[str, str] | None = None) -> None:
        self._spawn(
            name,
            [
                str(TOOLS_BIN / "envoy"),
                "-c", str(config),
                "--disable-hot-restart",
                "--base-id", str(next(self._base_ids)),
                "--log-level", "warn",
                "--file-flush-interval-msec", "200",  # access-log lines appear at once
                *self.envoy_args,
            ],
            env=env,
        )
        self._wait(name, lambda: http_get(f"http://127.0.0.1:{admin_port}/ready")[0] == 200)

    def start_extra_envoy(self, name: str, template: str, env: dict[str, str] | None = None) -> str:
        """Another Envoy, from `template` (the text of an envoy/*.yaml file), in front of this
        stack's agent-authz and upstreams on its own listener and admin ports; its listener URL."""
        ports = {k: self.ports[k] for k in ("authz", "authz_admin", "llm", "mcp")}
        ports.update(listener=free_port(), admin=free_port())
        config = self.dir / f"{name}.yaml"
        config.write_text(render_envoy_config(template, ports, str(self.jwks_path)))
        self._spawn_envoy(name, config, ports["admin"], env)
        return f"http://127.0.0.1:{ports['listener']}"

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for name in reversed(list(self.procs)):
            self._kill(name)
        _live_stacks.discard(self)
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # Stopping and restarting Cerbos alone (tests of "Cerbos is down").
    def _cerbos_ready(self) -> bool:
        if self.cerbos_tls:
            # Its health endpoint speaks TLS too; the listener accepting is enough here (the
            # tests themselves show whether agent-authz's TLS handshake succeeds).
            return tcp_open(self.ports["cerbos_grpc"])
        return http_get(f"{self.cerbos_http_url}/_cerbos/health")[0] == 200

    def stop_cerbos(self) -> None:
        self._kill("cerbos")

    def start_cerbos(self) -> None:
        self._spawn(
            "cerbos",
            [str(TOOLS_BIN / "cerbos"), "server", f"--config={self.dir / 'cerbos.yaml'}"],
            env={"CERBOS_NO_TELEMETRY": "1"},
        )
        self._wait("cerbos", self._cerbos_ready)

    # ------------------------------------------------------------------ files
    @property
    def policies_dir(self) -> Path:
        return self.dir / "policies" if self.copy_policies else REPO / "policies"

    def _write_files(self) -> None:
        if self.copy_policies and not self.policies_dir.exists():
            shutil.copytree(REPO / "policies", self.policies_dir)
        self.jwks_path.write_text(json.dumps({"keys": [jwk_for(self.key)]}, indent=2))
        self.executions_log.touch()

        cerbos_template = (REPO / "cerbos" / "config.yaml").read_text()
        cerbos_config = render_cerbos_config(
            cerbos_template,
            grpc_port=self.ports["cerbos_grpc"],
            http_port=self.ports["cerbos_http"],
            policies=self.policies_dir,
        )
        if self.cerbos_tls:
            cerbos = yaml.safe_load(cerbos_config)
            cerbos["server"]["tls"] = {"cert": str(self.cerbos_tls[0]), "key": str(self.cerbos_tls[1])}
            cerbos_config = yaml.safe_dump(cerbos, sort_keys=False)
        (self.dir / "cerbos.yaml").write_text(cerbos_config)

        envoy_ports = {k: self.ports[k] for k in ("listener", "admin", "authz", "authz_admin", "llm", "mcp")}
        (self.dir / "envoy.yaml").write_text(
            render_envoy_config(self.envoy_template.read_text(), envoy_ports, str(self.jwks_path))
        )

        config = default_authz_config()
        config["server"]["grpc_address"] = f"127.0.0.1:{self.ports['authz']}"
        # agent-authz's admin listener (metrics, health) defaults to the fixed 127.0.0.1:9192;
        # give each stack its own port so stacks (and a developer's own instance) can coexist.
        config["admin"] = {"address": f"127.0.0.1:{self.ports['authz_admin']}"}
        scheme = "https" if self.cerbos_tls else "http"
        config["cerbos"]["address"] = f"{scheme}://127.0.0.1:{self.ports['cerbos_grpc']}"
        if self.identity_source == "jwt":
            config["identity"]["jwt"]["jwks"]["file"] = str(self.jwks_path)
        else:
            config["identity"]["source"] = self.identity_source
            del config["identity"]["jwt"]
        config = deep_merge(config, self.authz_overrides)
        self.authz_config = config
        (self.dir / "agent-authz.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, separate_stdout: bool = False) -> None:
        log = self.dir / f"{name}.log"
        stdout_log = self.dir / f"{name}.stdout.log" if separate_stdout else None
        full_env = dict(os.environ)
        full_env.update(env or {})
        err = open(log, "ab")
        out = open(stdout_log, "ab") if stdout_log else err
        try:
            popen = subprocess.Popen(
                argv,
                cwd=REPO,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                preexec_fn=die_with_parent,  # own process group (stop() reaches its children)
            )
        finally:
            err.close()
            if out is not err:
                out.close()
        self.procs[name] = _Proc(name, argv, log, env, stdout_log, popen)

    def _kill(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.popen is None or proc.popen.poll() is not None:
            return
        pgid = proc.popen.pid  # == its process group id (setsid in die_with_parent)
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.popen.wait(timeout=5)

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while True:
            code = proc.popen.poll() if proc.popen else None
            if code is not None:
                raise StackError(f"{name} exited with status {code} before it was ready:\n{self.log_tail(name)}")
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{name} was not ready within {timeout:.0f}s:\n{self.log_tail(name)}")
            time.sleep(0.1)

    def log_path(self, name: str) -> Path:
        return self.procs[name].log

    def log_tail(self, name: str, lines: int = 40) -> str:
        proc = self.procs.get(name)
        if proc is None:
            return f"(no process {name})"
        parts = []
        for path in filter(None, (proc.log, proc.stdout_log)):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except FileNotFoundError:
                text = ["(no log)"]
            parts.append(f"--- {path} (last {lines} lines) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def all_log_tails(self, lines: int = 20) -> str:
        return "\n".join(self.log_tail(name, lines) for name in self.procs)

    # ------------------------------------------------------------------ tokens
    def mint_token(
        self,
        sub: str,
        roles: list[str] | None = None,
        *,
        exp_in: int = 300,
        iss: str = ISSUER,
        aud: str | list[str] = AUDIENCE,
        key: rsa.RSAPrivateKey | None = None,
        kid: str = KID,
        **claims: Any,
    ) -> str:
        """An RS256 JWT signed with the stack's key (or `key`), as the identity provider would issue."""
        now = int(time.time())
        payload: dict[str, Any] = {"iss": iss, "aud": aud, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + exp_in}
        if roles is not None:
            payload["roles"] = list(roles)
        payload.update(claims)
        pem = (key or self.key).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return pyjwt.encode(payload, pem, algorithm="RS256", headers={"kid": kid})

    def token_for(self, name: str, **overrides: Any) -> str:
        """A valid token for one of the demo PRINCIPALS (claims can be overridden)."""
        claims = dict(PRINCIPALS[name])
        claims.update(overrides)
        roles = claims.pop("roles")
        return self.mint_token(name, roles, **claims)

    # ------------------------------------------------------------------ observations
    def llm_received(self) -> list[dict]:
        """Every request the LLM upstream received (method, path, headers, body)."""
        status, body = http_get(f"{self.llm_direct_url}/_received")
        assert status == 200, status
        return json.loads(body)

    def llm_reset(self) -> None:
        req = urllib.request.Request(f"{self.llm_direct_url}/_reset", data=b"{}", method="POST")
        with urllib.request.urlopen(req, timeout=2) as resp:
            assert resp.status == 200

    def mcp_executions(self) -> list[dict]:
        """Every tool execution the MCP server performed: {"tool", "arguments"}."""
        text = self.executions_log.read_text() if self.executions_log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def mcp_received(self) -> list[str]:
        """The MCP server's access-log lines (uvicorn), one per HTTP request it received."""
        text = self.log_path("mcp_server").read_text(errors="replace")
        return [line for line in text.splitlines() if '"' in line and "HTTP/1.1" in line]

    def decisions(self) -> list[dict]:
        """agent-authz's decision log: one JSON object per stdout line."""
        path = self.procs["agent_authz"].stdout_log
        out = []
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "decision_id" in obj:
                out.append(obj)
        return out

    def cerbos_audit(self, kind: str = "decision") -> list[dict]:
        """Cerbos' own audit log entries (log.kind "decision" or "access"), from its stdout."""
        out = []
        for line in self.log_path("cerbos").read_text(errors="replace").splitlines():
            if '"cerbos.audit"' not in line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("log.kind") == kind:
                out.append(obj)
        return out

    def wait_for_request_decision(self, path: str, after: int, timeout: float = 5.0) -> dict:
        """The request-phase record for `path` from index `after` on. Not just the first record
        with that path: the strip and response legs write their own records for the same path,
        and the previous request's may land after `after` was counted (the log is batched)."""
        return self.wait_for_decision(
            lambda d: d.get("path") == path and d.get("phase") == "request", timeout=timeout, after=after
        )

    def wait_for_decision(self, predicate: Callable[[dict], bool], timeout: float = 5.0, after: int = 0) -> dict:
        """The first decision (from index `after` on) matching `predicate`, waiting for the log."""
        deadline = time.monotonic() + timeout
        while True:
            for decision in self.decisions()[after:]:
                if predicate(decision):
                    return decision
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no matching decision within {timeout}s; last decisions: "
                    + json.dumps(self.decisions()[-5:], indent=1)
                )
            time.sleep(0.05)


if __name__ == "__main__":
    # Start the stack and keep it up until Ctrl-C, printing what to talk to.
    with Stack(name="manual", keep_dir=True) as s:
        print(f"envoy:  {s.envoy_url}   (admin {s.envoy_admin_url})")
        print(f"logs:   {s.dir}")
        print(f"alice:  {s.mint_token('alice', ['support'], assigned_ticket='T-100', refund_limit_cents=100000, allowed_models=['gpt-4o-mini'])}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
