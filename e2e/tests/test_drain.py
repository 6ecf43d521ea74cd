"""Graceful drain, as the Kubernetes pod does it (k8s/base/config/envoy-drain.sh, the envoy
container's preStop hook), against the real Envoy with the shipped envoy/agent-gateway.yaml:
readiness fails first, a streaming answer in flight when the drain starts completes, and new
connections are refused once the listener has drained (a balancer sends them elsewhere)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import httpx
import pytest

from stack import REPO, Stack, http_get

DRAIN_SCRIPT = REPO / "k8s" / "base" / "config" / "envoy-drain.sh"
DRAIN_TIME = 2  # --drain-time-s here; the pod uses more (its preStop sets the same number)
ENDPOINT_GRACE = 1
STREAM_DELTAS = 16
STREAM_INTERVAL = 0.5  # the answer streams for ~8 s: well past the whole drain sequence


@pytest.fixture(scope="module")
def draining():
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="drain", upstream_script="slow_stream.py",
               envoy_args=("--drain-time-s", str(DRAIN_TIME), "--drain-strategy", "immediate")) as s:
        yield s


def connect_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_a_stream_in_flight_completes_and_new_connections_are_refused(draining):
    s = draining
    token = s.token_for("alice")
    events: list[tuple[float, str]] = []
    outcome: dict = {}

    def slow_stream() -> None:
        start = time.monotonic()
        try:
            with httpx.stream(
                "POST", f"{s.llm_base_url}/chat/completions",
                json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {token}", "x-slow-deltas": str(STREAM_DELTAS),
                         "x-slow-interval": str(STREAM_INTERVAL)},
                timeout=httpx.Timeout(10.0, read=30.0),
            ) as r:
                outcome["status"] = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append((time.monotonic() - start, line[6:]))
        except httpx.HTTPError as e:
            outcome["error"] = f"{type(e).__name__}: {e}"

    client = threading.Thread(target=slow_stream)
    client.start()
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events, f"the stream never started: {outcome}\n{s.all_log_tails()}"
    assert http_get(f"{s.envoy_url}/healthz")[0] == 200
    assert http_get(f"{s.envoy_admin_url}/ready")[0] == 200

    # The pod's preStop hook, pointed at this Envoy's admin port, with short waits.
    env = {**os.environ, "ENVOY_ADMIN_PORT": str(s.ports["admin"]), "DRAIN_ENDPOINT_GRACE_SECONDS": str(ENDPOINT_GRACE),
           "DRAIN_TIME_SECONDS": str(DRAIN_TIME), "DRAIN_MAX_WAIT_SECONDS": "30"}
    drain = subprocess.Popen(["bash", str(DRAIN_SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    drain_started = time.monotonic()

    # 1. Readiness fails first, while the listener still serves.
    deadline = time.monotonic() + ENDPOINT_GRACE
    while http_get(f"{s.envoy_admin_url}/ready")[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_get(f"{s.envoy_admin_url}/ready")[0] == 503, "readiness did not fail first"
    assert http_get(f"{s.envoy_url}/healthz")[0] == 503, "balancers' health check did not fail first"
    assert not connect_refused(s.ports["listener"]), "the listener closed before the endpoint could leave"

    # 2. Once the listener has drained, new connections are refused (they go to other pods)...
    deadline = drain_started + ENDPOINT_GRACE + DRAIN_TIME + 3
    while not connect_refused(s.ports["listener"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connect_refused(s.ports["listener"]), "the drained listener still accepts connections"
    assert client.is_alive(), "the stream ended before the listener drained: make it longer"
    assert drain.poll() is None, "the hook returned (SIGTERM would follow) with a stream in flight"

    # 3. ...while the answer in flight streams to its end.
    client.join(timeout=30)
    assert outcome.get("status") == 200 and "error" not in outcome, outcome
    assert len(events) == STREAM_DELTAS + 2 and events[-1][1] == "[DONE]", events[-3:]

    # The hook returns once nothing is in flight (then the kubelet sends SIGTERM), not before.
    out, _ = drain.communicate(timeout=30)
    assert drain.returncode == 0, out
    assert "drained after" in out and "(in flight: 0)" in out, out
