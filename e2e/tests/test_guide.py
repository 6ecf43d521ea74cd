"""docs/protect-your-gateway.md and docs/writing-policies.md, run as written.

docs/protect-your-gateway.md: its files written, its servers started, its
commands run in order in an empty directory, against the real Envoy, Cerbos and agent-authz on
the guide's own (fixed) loopback ports. Every output the guide shows is compared with what the
command printed. Then the guide's policies are replaced by one allowing everything, and every
refusal the guide shows must stop happening: the checks judge what agent-authz decided.

Only the guide's "before you start" block is not run: the test provides what it sets up (the
binaries on PATH, the Python with the SDKs, an empty directory).

docs/writing-policies.md: every policy and test suite it shows is written out and compiled by
the real Cerbos (`cerbos compile` runs the suites), and the outputs it shows are compared.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from markdown_steps import Step, mismatch, steps  # noqa: E402
from stack import REPO, TOOLS_BIN, agent_authz_binary, die_with_parent  # noqa: E402
from conftest import require_stack_binaries  # noqa: E402

GUIDE = REPO / "docs" / "protect-your-gateway.md"
POLICY_GUIDE = REPO / "docs" / "writing-policies.md"
PORTS = [10000, 9901, 9191, 9192, 3592, 3593, 8081, 8082]
READY_TIMEOUT = 30.0

ALLOW_ALL = {
    "llm_model.yaml": "llm_model", "mcp_server.yaml": "mcp_server",
}
ALLOW_ALL_POLICY = """apiVersion: api.cerbos.dev/v1
resourcePolicy:
  version: default
  resource: {kind}
  rules:
    - name: everything
      actions: ["*"]
      effect: EFFECT_ALLOW
      roles: ["*"]
"""


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def ready(url: str) -> bool:
    if url.startswith("tcp://"):
        host, port = url[len("tcp://"):].rsplit(":", 1)
        with socket.socket() as s:
            return s.connect_ex((host, int(port))) == 0
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Guide:
    """Runs the guide's steps in `workdir`, keeping its background servers."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.servers: dict[str, subprocess.Popen] = {}
        path = os.pathsep.join(
            [str(agent_authz_binary().parent), str(TOOLS_BIN), str(REPO / ".tools" / "venv" / "bin"),
             os.environ.get("PATH", "/usr/bin:/bin")]
        )
        self.env = {**os.environ, "PATH": path, "AGENT_AUTHZ_REPO": str(REPO), "CERBOS_NO_TELEMETRY": "1"}

    def log(self, name: str) -> str:
        path = self.dir / f".{name}.stderr"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self, step: Step) -> None:
        name, url = step.args
        err = open(self.dir / f".{name}.stderr", "wb")
        self.servers[name] = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", step.text], cwd=self.dir, env=self.env,
            stdin=subprocess.DEVNULL, stderr=err, preexec_fn=die_with_parent,
        )
        err.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready(url):
            code = self.servers[name].poll()
            assert code is None, f"{name} (guide line {step.line}) exited with {code}:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{name} not ready at {url}:\n{self.log(name)}"
            time.sleep(0.2)

    def run(self, step: Step) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", step.text], cwd=self.dir, env=self.env,
            capture_output=True, text=True, timeout=120,
        )

    def stop(self) -> None:
        for proc in reversed(list(self.servers.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)


def test_every_block_of_the_guide_is_marked():
    parsed = steps(GUIDE)  # fails on an unmarked block
    kinds = [s.kind for s in parsed]
    assert kinds.count("not run") == 1, "only the set-up block may be left to the reader"
    assert kinds.count("start") == 5, "LLM upstream, MCP server, Cerbos, agent-authz, Envoy"
    refusals = [s for s in parsed if s.kind == "run" and s.expect and "may not" in s.expect.text]
    assert len(refusals) >= 5


def follow(guide: Guide, parsed: list[Step]) -> None:
    """Every step in order: files written, servers started, commands run and their output checked."""
    for step in parsed:
        if step.kind == "file":
            target = guide.dir / step.args[0]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.text)
        elif step.kind == "start":
            guide.start(step)
        elif step.kind == "run":
            result = guide.run(step)
            where = f"line {step.line}:\n{step.text}"
            assert result.returncode == 0, f"{where}\nexit {result.returncode}\n{result.stdout}{result.stderr}"
            why = mismatch(step, result.stdout)
            assert why is None, f"{where}\n{why}\nstderr: {result.stderr[-2000:]}"


def test_the_policy_guide_compiles_and_its_suites_pass(tmp_path):
    require_stack_binaries()
    parsed = steps(POLICY_GUIDE)
    files = [s.args[0] for s in parsed if s.kind == "file"]
    assert "policies/mcp_server.yaml" in files and "policies/tests/mcp_server_test.yaml" in files
    assert any(s.kind == "run" and s.text.startswith("cerbos compile") for s in parsed)
    follow(Guide(tmp_path), parsed)


def test_the_guide_works_as_written(tmp_path):
    require_stack_binaries()
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        pytest.fail(f"the guide uses fixed ports and these are taken: {busy}", pytrace=False)
    parsed = steps(GUIDE)
    guide = Guide(tmp_path)
    try:
        follow(guide, parsed)

        # The same checks against a policy that allows everything: each refusal the guide
        # shows must now be missing, or the guide's checks could not catch a gateway that lets
        # everything through.
        refusals = [s for s in parsed if s.kind == "run" and s.expect and "may not" in s.expect.text]
        policies = tmp_path / "policies"
        shutil.rmtree(policies / "tests")
        for name, kind in ALLOW_ALL.items():
            (policies / name).write_text(ALLOW_ALL_POLICY.format(kind=kind))
        deadline = time.monotonic() + 20
        while mismatch(refusals[0], guide.run(refusals[0]).stdout) is None:  # Cerbos reloads
            assert time.monotonic() < deadline, "Cerbos did not load the allow-all policies"
            time.sleep(0.5)
        for step in refusals:
            result = guide.run(step)
            assert "may not" not in result.stdout, f"guide line {step.line} still refused:\n{result.stdout}"
            assert mismatch(step, result.stdout) is not None, f"guide line {step.line} passes when all is allowed"
    finally:
        guide.stop()
